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


def start(verbose: int, config: Path | None) -> None:
    """What every entry point does first: logging, offline models, the config file."""
    configure_logging(verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config is not None:
        os.environ["MYOQA_CONFIG_FILE"] = str(config)


def configure_logging(verbose: int) -> None:
    """Logging is configured here, at the entry points, and nowhere else."""
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
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
