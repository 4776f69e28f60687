"""The ``myositis-qa`` command group: ``index`` and ``settings`` live here; ``ask``,
``serve``, ``feedback``, ``classify`` and ``criteria-ids`` are registered from their own
modules."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from app.cli.ask import ask
from app.cli.classify import classify_command, criteria_ids
from app.cli.common import settings_with, start, user_errors
from app.cli.serve import feedback, serve
from indexer.settings import load_settings

log = logging.getLogger(__name__)


@click.group()
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MYOQA_CONFIG_FILE",
    help="JSON file with settings (e.g. one course's title, examples and index path).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="myositis-qa")
@click.pass_context
def main(ctx: click.Context, config: Path | None, verbose: int) -> None:
    """Literature-grounded answers about idiopathic inflammatory myopathies."""
    start(verbose, config, quiet=ctx.invoked_subcommand == "ask")


@main.command()
@click.option("--rebuild", is_flag=True, help="Re-embed everything instead of only what changed.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) when any file cannot be indexed.")
@click.option(
    "--corpus-dir", type=click.Path(file_okay=False, path_type=Path), help="Source folder."
)
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), help="Manifest CSV.")
@click.option("--index-dir", type=click.Path(file_okay=False, path_type=Path), help="Index folder.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar while embedding.")
@user_errors
def index(
    rebuild: bool,
    strict: bool,
    corpus_dir: Path | None,
    manifest: Path | None,
    index_dir: Path | None,
    progress: bool,
) -> None:
    """Build or update the index from the corpus folder and its manifest."""
    from indexer.build import build_index, up_to_date_manifest
    from indexer.embeddings import load_embedding_model

    settings = settings_with(
        paths__corpus_dir=corpus_dir, paths__manifest=manifest, paths__index_dir=index_dir
    )
    current = None if rebuild else up_to_date_manifest(settings)
    if current is not None:  # nothing changed: no model to load, each skipped file once
        for name, reason in current.skipped.items():
            click.echo(f"skipped {name}: {reason}", err=True)
        if strict and current.skipped:
            raise click.ClickException(
                f"--strict: {len(current.skipped)} file(s) could not be indexed."
            )
        click.echo(f"The index at {settings.paths.index_dir} is up to date.")
        return
    model = load_embedding_model(settings.embedding)
    report = build_index(settings, model, rebuild=rebuild, strict=strict, progress=progress)
    for problem in report.skipped:
        click.echo(f"skipped {problem}", err=True)
    for warning in report.warnings:
        click.echo(f"warning {warning}", err=True)
    click.echo(report.summary())


@main.command(name="settings")
@click.option("--table", is_flag=True, help="Print the README's configuration table.")
@user_errors
def show_settings(table: bool) -> None:
    """Print the effective settings as JSON (secrets hidden), or the settings table."""
    from indexer.settings import settings_table

    if table:
        click.echo(settings_table())
        return
    click.echo(load_settings().model_dump_json(indent=2))


main.add_command(ask)
main.add_command(serve)
main.add_command(feedback)
main.add_command(classify_command)
main.add_command(criteria_ids)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
