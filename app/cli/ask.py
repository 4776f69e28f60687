"""``myositis-qa ask``: one question, or a ``--batch`` JSONL file of them (registered in
``app.cli.main``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from app.cli.common import configure_logging, settings_with
from indexer.errors import MyoQAError

log = logging.getLogger(__name__)


def _batch_rows(path: Path) -> Iterator[tuple[Any, str | None, str | None]]:
    """``(id, question, error)`` for every non-blank line of a ``--batch`` file.

    A line without an ``id`` is named by its line number; a line that is not a JSON
    object with a string ``question`` yields an error instead of stopping the batch.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MyoQAError(f"Cannot read the batch file {path}: {exc}") from exc
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            reason = getattr(exc, "msg", None) or type(exc).__name__
            yield line_no, None, f"{path.name} line {line_no} is not valid JSON ({reason})."
            continue
        row_id = row.get("id") if isinstance(row, dict) else None
        row_id = line_no if row_id is None else row_id
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            yield row_id, None, f"{path.name} line {line_no} needs a string field 'question'."
            continue
        yield row_id, row["question"], None


def _check_encodable(question: str) -> str:
    """Refuse text that is not valid Unicode (e.g. undecodable bytes in a shell argument)."""
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MyoQAError(
            "The question contains bytes that are not valid UTF-8 text; please retype it."
        ) from exc
    return question


def format_answer(answer: Any) -> str:
    """A readable answer with its numbered sources."""
    lines = [answer.answer, ""]
    for c in answer.citations:
        located = c.section and f"section {c.section}"
        if getattr(c, "digest_title", ""):
            located = f"in: myositis-qa digest {c.digest_title}" + (
                f", section {c.section}" if c.section else ""
            )
        where = ", ".join(
            part
            for part in (
                located,
                c.page and f"p. {c.page}",
                c.doi and f"doi:{c.doi}",
                c.pmid and f"PMID {c.pmid}",
            )
            if part
        )
        byline = ". ".join(p for p in (c.authors, c.journal or c.year) if p)
        lines.append(f"[{c.n}] {c.title}" + (f" ({byline})" if byline else "") + f". {where}")
    return "\n".join(lines).rstrip()


@click.command()
@click.argument("question", required=False)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {answer, citations, abstained, reason}; an error is {"error": ...} on stdout.',
)
@click.option(
    "--batch",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL file with 'id' and 'question' per line; one JSON answer (or error) per line.",
)
@click.option("--index-dir", type=click.Path(file_okay=False, path_type=Path), help="Index folder.")
@click.option("--mode", type=click.Choice(["extractive", "llm"]), help="Answerer to use.")
@click.option(
    "-v", "--verbose", count=True, help="Show progress bars and INFO logging (-vv for debug)."
)
@click.pass_context
def ask(
    ctx: click.Context,
    question: str | None,
    as_json: bool,
    batch: Path | None,
    index_dir: Path | None,
    mode: str | None,
    verbose: int,
) -> None:
    """Answer QUESTION from the indexed literature, with citations.

    Quiet by default: only the answer (or the error) is printed. With --json or --batch
    an error is a JSON object {"error": ...} on stdout and the exit code is 1.
    """
    if verbose:  # `ask -v` as well as `myositis-qa -v ask`
        group_verbose = ctx.find_root().params.get("verbose") or 0
        configure_logging(max(verbose, group_verbose), quiet=True)
    try:
        _ask(question, batch, index_dir, mode, as_json)
    except MyoQAError as exc:
        if os.environ.get("MYOQA_DEBUG"):
            raise
        if not (as_json or batch is not None):
            raise click.ClickException(str(exc)) from exc
        log.debug("ask failed", exc_info=True)
        click.echo(json.dumps({"error": str(exc)}, ensure_ascii=False))
        ctx.exit(1)


def _ask(
    question: str | None,
    batch: Path | None,
    index_dir: Path | None,
    mode: str | None,
    as_json: bool,
) -> None:
    from app.qa.chain import load_chain, validate_question

    if batch is None and question is None:
        raise MyoQAError(
            'Give a question, e.g. myositis-qa ask "What is anti-MDA5 DM?", or --batch FILE.'
        )
    settings = settings_with(paths__index_dir=index_dir, answer__mode=mode)
    if batch is not None:
        rows = list(_batch_rows(batch))
        chain = load_chain(settings)
        for row_id, text, problem in rows:
            out: dict[str, Any]
            if problem is not None:
                out = {"error": problem}
            else:
                try:
                    assert text is not None
                    out = chain.ask(_check_encodable(text)).contract()
                except MyoQAError as exc:
                    out = {"error": str(exc)}
            click.echo(json.dumps({"id": row_id, **out}, ensure_ascii=False))
        return
    # a bad question is reported before the model and index take seconds to load
    question = validate_question(
        _check_encodable(question or ""), settings.answer.max_question_chars
    )
    answer = load_chain(settings).ask(question)
    if as_json:
        click.echo(json.dumps(answer.contract(), ensure_ascii=False, indent=2))
    else:
        click.echo(format_answer(answer))
