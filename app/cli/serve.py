"""``myositis-qa serve`` and ``myositis-qa feedback export`` (registered in ``app.cli.main``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from app.cli.common import settings_with, user_errors
from indexer.settings import Settings


def _settings(config: Path | None, **overrides: Any) -> Settings:
    """Settings from the config file/env, with the given ``section__field`` flags applied."""
    if config is not None:
        os.environ["MYOQA_CONFIG_FILE"] = str(config)
    return settings_with(**overrides)


_config_option = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON settings file (e.g. one course's title, examples and index path); "
    "same as MYOQA_CONFIG_FILE.",
)


@click.command()
@click.option("--host", help="Interface to listen on (server.host; default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (server.port; default 7860).")
@click.option("--root-path", help="Path prefix when served behind a proxy (server.root_path).")
@click.option("--index-dir", type=click.Path(file_okay=False, path_type=Path), help="Index folder.")
@_config_option
@user_errors
def serve(
    host: str | None,
    port: int | None,
    root_path: str | None,
    index_dir: Path | None,
    config: Path | None,
) -> None:
    """Serve the chat, the JSON API (/api/ask) and /healthz."""
    from app.web.server import serve as run

    settings = _settings(
        config,
        server__host=host,
        server__port=port,
        server__root_path=root_path,
        paths__index_dir=index_dir,
    )
    run(settings)


@click.group()
def feedback() -> None:
    """Trainees' thumbs up/down and comments on answers."""


@feedback.command(name="export")
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV file to write.",
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Feedback database (paths.feedback_db; default data/feedback.sqlite3).",
)
@_config_option
@user_errors
def export(csv_path: Path, force: bool, db: Path | None, config: Path | None) -> None:
    """Write every stored vote (question, answer, sources, rating, comment, time) to a CSV."""
    from app.feedback import FeedbackStore

    settings = _settings(config, paths__feedback_db=db)
    count = FeedbackStore(settings.paths.feedback_db).export_csv(csv_path, force=force)
    click.echo(f"Exported {count} feedback rows to {csv_path}")
