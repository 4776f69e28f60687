"""The ``myositis-qa`` command: index, ask, serve, feedback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from app.cli_common import settings_with, start, user_errors
from app.cli_serve import feedback, serve
from indexer.errors import MyoQAError
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
def main(config: Path | None, verbose: int) -> None:
    """Literature-grounded answers about idiopathic inflammatory myopathies."""
    start(verbose, config)


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
    from indexer.build import build_index, is_up_to_date
    from indexer.embeddings import load_embedding_model

    settings = settings_with(
        paths__corpus_dir=corpus_dir, paths__manifest=manifest, paths__index_dir=index_dir
    )
    if not rebuild and is_up_to_date(settings):
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


def _read_batch(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MyoQAError(f"{path} line {line_no} is not valid JSON ({exc.msg}).") from exc
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise MyoQAError(f"{path} line {line_no} needs a string field 'question'.")
        rows.append(row)
    return rows


def format_answer(answer: Any) -> str:
    """A readable answer with its numbered sources."""
    lines = [answer.answer, ""]
    for c in answer.citations:
        where = ", ".join(
            part
            for part in (
                c.section and f"section {c.section}",
                c.page and f"p. {c.page}",
                c.doi and f"doi:{c.doi}",
                c.pmid and f"PMID {c.pmid}",
            )
            if part
        )
        lines.append(f"[{c.n}] {c.title} ({c.journal or c.year}). {where}")
    return "\n".join(lines).rstrip()


@main.command()
@click.argument("question", required=False)
@click.option(
    "--json", "as_json", is_flag=True, help="Print {answer, citations, abstained, reason}."
)
@click.option(
    "--batch",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL file with 'id' and 'question' per line; one JSON answer per line.",
)
@click.option("--index-dir", type=click.Path(file_okay=False, path_type=Path), help="Index folder.")
@click.option("--mode", type=click.Choice(["extractive", "llm"]), help="Answerer to use.")
@user_errors
def ask(
    question: str | None,
    as_json: bool,
    batch: Path | None,
    index_dir: Path | None,
    mode: str | None,
) -> None:
    """Answer QUESTION from the indexed literature, with citations."""
    from app.chain import load_chain, validate_question

    if batch is None and question is None:
        raise MyoQAError(
            'Give a question, e.g. myositis-qa ask "What is anti-MDA5 DM?", or --batch FILE.'
        )
    settings = settings_with(paths__index_dir=index_dir, answer__mode=mode)
    if batch is not None:
        rows = _read_batch(batch)
        chain = load_chain(settings)
        for row in rows:
            try:
                out = chain.ask(row["question"]).contract()
            except MyoQAError as exc:
                out = {"error": str(exc)}
            click.echo(json.dumps({"id": row.get("id"), **out}, ensure_ascii=False))
        return
    # a bad question is reported before the model and index take seconds to load
    question = validate_question(question, settings.answer.max_question_chars)
    answer = load_chain(settings).ask(question)
    if as_json:
        click.echo(json.dumps(answer.contract(), ensure_ascii=False, indent=2))
    else:
        click.echo(format_answer(answer))


main.add_command(serve)
main.add_command(feedback)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
