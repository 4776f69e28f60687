"""Helpers shared by the ``myositis-qa`` and ``myositis-qa-eval`` commands."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from indexer.errors import MyoQAError
from indexer.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
#: Whether HF_HUB_DISABLE_PROGRESS_BARS was set by a quiet command (not by the user).
_bars_hidden = False


def user_errors(func: F) -> F:
    """Turn a MyoQAError into a clean CLI error (set MYOQA_DEBUG=1 for the traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MyoQAError as exc:
            if os.environ.get("MYOQA_DEBUG"):
                raise
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def start(verbose: int, config: Path | None, *, quiet: bool = False) -> None:
    """What every entry point does first: logging, offline models, the config file.

    Args:
        verbose: ``-v`` count.
        config: The ``--config`` file, if given.
        quiet: Commands whose output is the result (``ask``): warnings only and no
            progress bars unless ``-v`` is given.
    """
    configure_logging(verbose, quiet=quiet)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config is not None:
        os.environ["MYOQA_CONFIG_FILE"] = str(config)


def configure_logging(verbose: int, *, quiet: bool = False) -> None:
    """Logging is configured here, at the entry points, and nowhere else.

    Without ``-v`` the level is INFO, or WARNING when ``quiet``; a quiet command also
    hides the model's loading bars (``HF_HUB_DISABLE_PROGRESS_BARS``, read when
    transformers is first imported). ``-v`` is INFO, ``-vv`` DEBUG.
    """
    if verbose:
        level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    else:
        level = logging.WARNING if quiet else logging.INFO
    global _bars_hidden
    if quiet and not verbose and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        _bars_hidden = True
    elif verbose and _bars_hidden:  # `ask -v` after the group made it quiet
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        _bars_hidden = False
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "sentence_transformers", "transformers", "faiss", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def settings_with(**overrides: Any) -> Settings:
    """Settings with command-line flags (``section__field=value``; None = not given) applied."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, field = key.split("__", 1)
        nested.setdefault(section, {})[field] = value
    base = load_settings()
    if not nested:
        return base
    data = base.model_dump()
    for section, values in nested.items():
        data[section].update(values)
    return load_settings(**data)
