"""``myositis-qa classify`` (the EULAR/ACR 2017 calculator) and ``myositis-qa criteria-ids``
(refresh the calculator's cited chunk ids from a built index); registered in ``app.cli.main``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from app.cli.common import settings_with, user_errors
from app.qa.criteria import (
    ITEM_FIELDS,
    TABLE_RESOURCE,
    Case,
    Classification,
    ScoreBand,
    load_table,
    parse_table,
)
from indexer.errors import MyoQAError

log = logging.getLogger(__name__)


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _item_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One ``--flag`` per score item of the case (e.g. ``--gottrons-sign``)."""
    for name in reversed(ITEM_FIELDS):
        description = Case.model_fields[name].description or name
        func = click.option(_option_name(name), name, is_flag=True, help=description)(func)
    return func


def _cite(row: Any) -> str:
    return f" [{row.cite}]" if row.cite else ""


def format_result(result: ScoreBand) -> str:
    """The result as text: items and weights, total, band, category, cut-offs, notes, sources."""
    lines: list[str] = []
    if isinstance(result, Classification):
        lines.append(f"{result.criteria}: weights {result.column}")
        width = max(len(i.label) for i in result.items)
        for item in result.items:
            lines.append(f"  {item.label:<{width}}  {item.weight:>4.1f}{_cite(item)}")
        lines.append(f"Total score: {result.score:.1f}")
    else:
        lines.append(f"Total score {result.score:.1f} ({result.column})")
    lines.append(f"Probability band: {result.band.probability} ({result.band.label})")
    if isinstance(result, Classification):
        lines.append(f"Category: {result.category_label}")
    if result.next_cutoff is not None:
        nxt = result.next_cutoff
        lines.append(
            f"Next cut-off: {nxt.category} ({nxt.probability}) at {nxt.score:.1f}, "
            f"{nxt.distance:.1f} points away"
        )
    else:
        lines.append("Next cut-off: none (the highest cut-off is reached)")
    cutoffs = "; ".join(f"{c.category} ≥{c.score:.1f}{_cite(c)}" for c in result.cutoffs)
    lines.append(f"Cut-offs {result.column}: {cutoffs}")
    lines.append("Notes:")
    lines.extend(f"  - {note.text}{_cite(note)}" for note in result.notes)
    if result.citations:
        lines.append("Sources:")
        for c in result.citations:
            where = ", ".join(
                p for p in (c.section and f"section {c.section}", c.doi and f"doi:{c.doi}") if p
            )
            lines.append(f"  [{c.n}] {c.title} ({c.journal or c.year}). {where}")
            lines.extend(f'      "{h}"' for h in c.highlights)
    else:
        lines.append("Sources (quotes; build the index to see the full passages):")
        rows = [*getattr(result, "items", []), *result.cutoffs, *result.notes]
        seen = set()
        for row in rows:
            if row.quote not in seen:
                seen.add(row.quote)
                lines.append(f'  {row.source_id} ({row.chunk_id}): "{row.quote}"')
    lines.append(result.disclaimer)
    return "\n".join(lines)


@click.command(name="classify")
@click.option(
    "--age-at-onset",
    type=float,
    help="Age in years at the first symptom (18 or more).",
)
@click.option(
    "--muscle-biopsy/--no-muscle-biopsy",
    default=False,
    help="A muscle biopsy was done: use the weights with biopsy (and allow the biopsy items).",
)
@_item_options
@click.option(
    "--score",
    type=float,
    help="Instead of a case: say what this total score means (with --muscle-biopsy or not).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--index-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Index folder whose passages are cited (default: paths.index_dir).",
)
@user_errors
def classify_command(
    age_at_onset: float | None,
    muscle_biopsy: bool,
    score: float | None,
    as_json: bool,
    index_dir: Path | None,
    **items: bool,
) -> None:
    """Score a case with the 2017 EULAR/ACR classification criteria for IIM.

    Every weight and cut-off is cited to the corpus passage that states it. An
    educational tool for classification (research and teaching), not a diagnostic
    device. Example: myositis-qa classify --age-at-onset 45 --gottrons-sign
    --raised-muscle-enzymes
    """
    from app.qa.criteria_index import Calculator

    calculator = Calculator(settings_with(paths__index_dir=index_dir).paths.index_dir)
    ticked = [name for name, on in items.items() if on]
    result: ScoreBand
    if score is not None:
        if ticked or age_at_onset is not None:
            raise MyoQAError("Give either --score or a case (--age-at-onset and items), not both.")
        result = calculator.score_band(score, muscle_biopsy)
    else:
        if age_at_onset is None:
            raise MyoQAError(
                "Give --age-at-onset YEARS (age at the first symptom), e.g. "
                "myositis-qa classify --age-at-onset 45 --gottrons-sign; or --score N."
            )
        try:
            case = Case(age_at_onset=age_at_onset, muscle_biopsy=muscle_biopsy, **items)
        except ValidationError as exc:  # pragma: no cover - click already checked the types
            raise MyoQAError(str(exc)) from exc
        result = calculator.classify(case)
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), ensure_ascii=False, indent=2))
    else:
        click.echo(format_result(result))


def _table_path() -> Path:
    import app.qa

    return Path(app.qa.__file__).parent / TABLE_RESOURCE


@click.command(name="criteria-ids")
@click.option(
    "--index-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Built index to read the passages from (default: paths.index_dir).",
)
@click.option(
    "--table",
    "table_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The calculator's table (default: the bundled app/qa/data/eular_acr_2017.json).",
)
@click.option("--check", is_flag=True, help="Only report; exit 1 when a chunk id is stale.")
@user_errors
def criteria_ids(index_dir: Path | None, table_path: Path | None, check: bool) -> None:
    """Refresh the calculator's cited chunk ids from a built index.

    Each row of the table is pointed at the indexed passage of its source that
    contains the row's quote; run it after `myositis-qa index` whenever a digest the
    calculator cites was edited. Rows whose quote is no longer in the corpus are
    reported (fix their quote by hand).
    """
    from app.qa.criteria_index import check_table, read_passages, refresh_chunk_ids, write_table

    path = table_path or _table_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MyoQAError(f"Cannot read the calculator table {path}: {exc}") from exc
    settings = settings_with(paths__index_dir=index_dir)
    passages = read_passages(settings.paths.index_dir)
    refresh = refresh_chunk_ids(data, passages)
    for change in refresh.changed:
        click.echo(("stale " if check else "updated ") + change)
    try:
        table = parse_table(refresh.data)
    except ValidationError as exc:
        raise MyoQAError(f"The calculator table {path} is not valid: {exc}") from exc
    problems = [*refresh.problems, *check_table(table, passages)]
    if not check and refresh.changed:
        write_table(path, refresh.data)
        load_table.cache_clear()
        click.echo(f"Wrote {path}.")
    for problem in dict.fromkeys(problems):
        click.echo(f"problem {problem}", err=True)
    if problems or (check and refresh.changed):
        raise click.ClickException(
            f"{len(problems)} problem(s), {len(refresh.changed)} stale chunk id(s) in {path}."
        )
    click.echo(
        f"All {len(table.rows())} cited rows of {path.name} match the index at "
        f"{settings.paths.index_dir}."
    )
