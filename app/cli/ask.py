"""``myositis-qa ask``: one question, or a ``--batch`` JSONL file of them (registered in
``app.cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from app.cli.common import settings_with, user_errors
from indexer.errors import MyoQAError


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
    from app.qa.chain import load_chain, validate_question

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
