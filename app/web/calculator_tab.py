"""The "Classification calculator" tab: a case in, its 2017 EULAR/ACR score out, every
weight and cut-off shown with the corpus passage that states it.

``add_calculator_tab()`` is called by ``app.web.ui.build_app`` inside its ``gr.Tabs``;
the handlers live on ``CalculatorHandlers`` so tests can call them directly. The tab
opens pre-filled from the chat (an option under an answer about what an item scores
or what a score means) or from a link (``/?calculator=gottrons_sign&biopsy=no``).

Everything shown comes from the calculator's table or the indexed passages and is
HTML-escaped here; only the markup built in this module is HTML.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.qa.criteria import (
    EDUCATIONAL_USE,
    Case,
    ChatLink,
    Classification,
    CriteriaTable,
    ItemRow,
    ScoreBand,
    chat_link,
    make_citation,
)
from app.qa.criteria_index import Calculator
from app.qa.schema import Citation
from indexer.errors import MyoQAError
from indexer.settings import Settings

log = logging.getLogger(__name__)

TAB_ID = "calculator"
#: ``turn`` of the calculator's source boxes (the chat's turns count from 0).
CALC_TURN = 9999
#: Prefix of a chat option's value that opens the calculator.
OPTION_PREFIX = "calculator:"

#: The checkbox groups of the tab: (title, table groups).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Muscle weakness", ("weakness",)),
    ("Skin manifestations", ("skin",)),
    ("Other clinical and laboratory items", ("other", "laboratory")),
    ("Muscle biopsy features (only with a muscle biopsy)", ("biopsy",)),
)

CSS = """
.myoqa-calc-result table, .myoqa-calc-reference table { border-collapse: collapse; margin: .4rem 0; }
.myoqa-calc-result td, .myoqa-calc-result th, .myoqa-calc-reference td, .myoqa-calc-reference th {
  border-bottom: 1px solid rgba(127,127,127,.25); padding: .2rem .5rem; text-align: left;
  vertical-align: top; }
.myoqa-calc-result td.num, .myoqa-calc-reference td.num { text-align: right; white-space: nowrap; }
.myoqa-calc-summary { font-size: 1.05rem; }
.myoqa-calc-category { font-weight: 700; }
.myoqa-calc-quote { font-size: .85rem; opacity: .85; }
.myoqa-calc-warning { color: #92400e; }
"""


def _text(value: object) -> str:
    return html.escape(" ".join(str(value).split()), quote=True)


def _marker(n: int | None) -> str:
    from app.web.ui import source_key  # ui imports this module at load time

    if n is None:
        return ""
    return (
        f'<sup class="myoqa-cite"><a href="#{source_key(CALC_TURN, n)}" '
        f'title="Source {n}">[{n}]</a></sup>'
    )


def _quote_inline(row: Any) -> str:
    """The row's quote, shown when its passage cannot be looked up."""
    if row.cite is not None:
        return ""
    return f' <span class="myoqa-calc-quote">“{_text(row.quote)}” ({_text(row.source_id)})</span>'


def _weight(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _sources(citations: Sequence[Citation], missing: str | None) -> str:
    from app.web.ui import render_citation  # ui imports this module at load time

    if not citations:
        warning = f" ({_text(missing)})" if missing else ""
        return (
            '<p class="myoqa-calc-warning">The full passages cannot be shown: the index is not '
            f"available{warning}. Each number is shown with its quote.</p>"
        )
    parts = [
        '<div class="myoqa-sources"><div class="myoqa-sources-title">Passages behind each number</div>'
    ]
    parts.extend(render_citation(c, CALC_TURN) for c in citations)
    parts.append("</div>")
    return "".join(parts)


def render_band(result: ScoreBand) -> str:
    """Band, next cut-off, the cut-offs and the notes of a result (escaped HTML)."""
    parts = []
    band = result.band
    parts.append(
        f"<p>Probability band: <strong>{_text(band.probability)}</strong> ({_text(band.label)})</p>"
    )
    if result.next_cutoff is not None:
        nxt = result.next_cutoff
        parts.append(
            f"<p>Next cut-off: {_text(nxt.category)} ({_text(nxt.probability)}) at a score of "
            f"{nxt.score:.1f}, {nxt.distance:.1f} points away.</p>"
        )
    else:
        parts.append("<p>Next cut-off: none; the highest cut-off is reached.</p>")
    cutoffs = " · ".join(
        f"{_text(c.category)} ≥{c.score:.1f}{_marker(c.cite)}{_quote_inline(c)}"
        for c in result.cutoffs
    )
    parts.append(f"<p>Score cut-offs {_text(result.column)}: {cutoffs}</p>")
    parts.append('<ul class="myoqa-calc-notes">')
    parts.extend(
        f"<li>{_text(note.text)}{_marker(note.cite)}{_quote_inline(note)}</li>"
        for note in result.notes
    )
    parts.append("</ul>")
    return "".join(parts)


def render_result(result: ScoreBand, missing: str | None = None) -> str:
    """A calculator result as one HTML block, with the passages behind each number."""
    parts = ['<div class="myoqa-answer myoqa-calc-result" id="myoqa-calc-result">']
    if isinstance(result, Classification):
        parts.append(
            f'<p class="myoqa-calc-summary">Total score <strong id="myoqa-calc-score">'
            f"{result.score:.1f}</strong> (weights {_text(result.column)}) · Category: "
            f'<span class="myoqa-calc-category" id="myoqa-calc-category">'
            f"{_text(result.category_label)}</span></p>"
        )
        parts.append("<table><tr><th>Item</th><th>Weight</th></tr>")
        for item in result.items:
            parts.append(
                f"<tr><td>{_text(item.label)}{_marker(item.cite)}{_quote_inline(item)}</td>"
                f'<td class="num">{item.weight:.1f}</td></tr>'
            )
        parts.append(
            f'<tr><th>Total</th><td class="num"><strong>{result.score:.1f}</strong></td></tr>'
            "</table>"
        )
    else:
        parts.append(
            f'<p class="myoqa-calc-summary">A total score of <strong id="myoqa-calc-score">'
            f"{result.score:.1f}</strong> {_text(result.column)}</p>"
        )
    parts.append(render_band(result))
    parts.append(_sources(result.citations, missing))
    parts.append("</div>")
    return "".join(parts)


def render_reference(table: CriteriaTable, highlight: Sequence[str] = ()) -> str:
    """Every item with both weights and the quote that states them."""
    rows = [
        '<div class="myoqa-calc-reference"><table><tr><th>Item</th><th>Without biopsy</th>'
        "<th>With biopsy</th><th>Stated in the corpus</th></tr>"
    ]
    for item in table.items:
        mark = ' style="background: #fef3c7"' if item.id in highlight else ""
        rows.append(
            f'<tr id="myoqa-calc-ref-{item.id}"{mark}><td>{_text(item.label)}</td>'
            f'<td class="num">{_weight(item.without_biopsy)}</td>'
            f'<td class="num">{_weight(item.with_biopsy)}</td>'
            f'<td class="myoqa-calc-quote">“{_text(item.quote)}” ({_text(item.source_id)}, '
            f"fact {item.fact})</td></tr>"
        )
    rows.append("</table></div>")
    return "".join(rows)


def render_item_weights(
    items: Sequence[ItemRow], muscle_biopsy: bool | None, calculator: Calculator
) -> str:
    """What the linked items score, with their passages (for a question from the chat)."""
    passages = calculator.passages.get()
    citations: list[Citation] = []
    parts = ['<div class="myoqa-answer myoqa-calc-result" id="myoqa-calc-result">', "<ul>"]
    for item in items:
        if muscle_biopsy is None:
            said = (
                f"{_weight(item.without_biopsy)} without muscle biopsy and "
                f"{_weight(item.with_biopsy)} with muscle biopsy"
                if item.without_biopsy is not None
                else f"{_weight(item.with_biopsy)} (scored only with a muscle biopsy)"
            )
        else:
            weight = item.weight(muscle_biopsy)
            column = "with muscle biopsy" if muscle_biopsy else "without muscle biopsy"
            said = f"{_weight(weight)} {column}"
        n = None
        if passages is not None and item.chunk_id in passages.chunks:
            chunk = passages.chunks[item.chunk_id]
            record = passages.records.get(chunk.source_id)
            if record is not None:
                n = len(citations) + 1
                citations.append(make_citation(n, chunk, record, [item.quote], passages.references))
        quote = "" if n is not None else f" “{_text(item.quote)}”"
        parts.append(
            f"<li>{_text(item.label)} scores <strong>{said}</strong>{_marker(n)}{quote}</li>"
        )
    parts.append("</ul>")
    parts.append(
        "<p>Enter the age at onset and the other findings of a case, then press "
        "<em>Calculate</em> for its total score and category.</p>"
    )
    parts.append(_sources(citations, calculator.passages_error))
    parts.append("</div>")
    return "".join(parts)


# --- handlers ---------------------------------------------------------------------------


def _group_ids(table: CriteriaTable, groups: tuple[str, ...]) -> list[str]:
    return [i.id for i in table.items if i.group in groups]


def _unchanged() -> tuple[Any, ...]:
    """No update for any of (tabs, age, biopsy, *groups, score, result)."""
    return (gr.update(),) * (5 + len(GROUPS))


class CalculatorHandlers:
    """The tab's event handlers, bound to one calculator (the API uses the same one type)."""

    def __init__(self, calculator: Calculator) -> None:
        self.calculator = calculator
        self.table = calculator.table

    def case_from(
        self, age: float | None, muscle_biopsy: bool, *groups: Sequence[str] | None
    ) -> Case:
        """The case the inputs describe.

        Raises:
            gr.Error: No age, or an item the table does not have.
        """
        if age is None:
            raise gr.Error("Enter the age at onset of the first symptom (in years).")
        ticked = [item for group in groups for item in (group or [])]
        known = {i.id for i in self.table.scored_items()}
        unknown = [i for i in ticked if i not in known]
        if unknown:
            raise gr.Error(f"Unknown items: {', '.join(unknown)}.")
        try:
            return Case(
                age_at_onset=float(age),
                muscle_biopsy=bool(muscle_biopsy),
                **dict.fromkeys(ticked, True),
            )
        except ValidationError as exc:
            raise gr.Error(f"The case is not valid: {exc.errors()[0]['msg']}") from exc

    def compute(
        self, age: float | None, muscle_biopsy: bool, *groups: Sequence[str] | None
    ) -> Classification:
        """The cited result for the inputs (``gr.Error`` for what the user must fix)."""
        case = self.case_from(age, muscle_biopsy, *groups)
        try:
            return self.calculator.classify(case)
        except MyoQAError as exc:
            raise gr.Error(str(exc)) from exc

    def calculate(
        self, age: float | None, muscle_biopsy: bool, *groups: Sequence[str] | None
    ) -> str:
        """The Calculate button: the result as HTML."""
        result = self.compute(age, muscle_biopsy, *groups)
        log.info("Calculator: score %.1f %s -> %s", result.score, result.column, result.category)
        return render_result(result, self.calculator.passages_error)

    def lookup(self, score: float | None, muscle_biopsy: bool) -> str:
        """The score lookup: what a total score means."""
        if score is None:
            raise gr.Error("Enter a total score, e.g. 6.0.")
        try:
            result = self.calculator.score_band(float(score), bool(muscle_biopsy))
        except MyoQAError as exc:
            raise gr.Error(str(exc)) from exc
        return render_result(result, self.calculator.passages_error)

    def clear(self) -> tuple[Any, ...]:
        """Empty every input and the result."""
        return (None, False, *([[]] * len(GROUPS)), None, "")

    # --- opening from the chat or a link ---------------------------------------------------

    def prefill(self, link: ChatLink) -> tuple[Any, ...]:
        """Updates for (tabs, age, biopsy, *groups, score, result) that open ``link``."""
        known = {i.id for i in self.table.scored_items()}
        link = link.model_copy(update={"items": [i for i in link.items if i in known]})
        groups = [
            gr.update(value=[i for i in link.items if self.table.item(i).group in names])
            for _, names in GROUPS
        ]
        age = gr.update(value=link.age_at_onset) if link.age_at_onset is not None else gr.update()
        biopsy = (
            gr.update(value=link.muscle_biopsy) if link.muscle_biopsy is not None else gr.update()
        )
        if link.score is not None:
            try:
                shown = render_result(
                    self.calculator.score_band(link.score, bool(link.muscle_biopsy)),
                    self.calculator.passages_error,
                )
            except MyoQAError as exc:
                shown = f'<p class="myoqa-calc-warning">{_text(exc)}</p>'
            score = gr.update(value=link.score)
        else:
            items = [self.table.item(i) for i in link.items]
            if link.age_at_onset is not None:
                items = [
                    i
                    for i in self.table.items
                    if i.group == "age" and i.min_age == link.age_at_onset
                ] + items
            shown = render_item_weights(items, link.muscle_biopsy, self.calculator)
            score = gr.update()
        return (gr.Tabs(selected=TAB_ID), age, biopsy, *groups, score, shown)

    def from_option(self, data: gr.SelectData) -> tuple[Any, ...]:
        """A chat option under an answer: open the calculator with its item filled in."""
        value = data.value.get("value") if isinstance(data.value, dict) else data.value
        link = parse_option(str(value or ""))
        if link is None:
            return _unchanged()
        return self.prefill(link)

    def from_query(self, request: gr.Request) -> tuple[Any, ...]:
        """``/?calculator=gottrons_sign,heliotrope_rash&biopsy=no&age=45`` (or ``&score=6``)."""
        params = dict(request.query_params) if request is not None else {}
        link = link_from_query(params, self.table)
        if link is None:
            return _unchanged()
        return self.prefill(link)


def option_for(question: str) -> dict[str, str] | None:
    """The chat option (label, value) for a question about scoring, or None."""
    try:
        link = chat_link(question)
    except Exception:  # a link is a convenience; the answer must never fail because of it
        log.exception("chat_link failed for %r", question)
        return None
    if link is None:
        return None
    return {"label": link.label(), "value": OPTION_PREFIX + link.model_dump_json()}


def parse_option(value: str) -> ChatLink | None:
    if not value.startswith(OPTION_PREFIX):
        return None
    try:
        return ChatLink.model_validate_json(value[len(OPTION_PREFIX) :])
    except ValidationError:
        return None


def link_from_query(params: dict[str, str], table: CriteriaTable) -> ChatLink | None:
    """A ``ChatLink`` from the page's query string; None when it has no calculator part."""
    if "calculator" not in params:
        return None
    known = {i.id for i in table.scored_items()}
    items = [i for i in params["calculator"].split(",") if i in known]
    biopsy_text = params.get("biopsy", "").lower()
    biopsy = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}.get(
        biopsy_text
    )
    if any(table.item(i).group == "biopsy" for i in items):
        biopsy = True

    def number(key: str) -> float | None:
        try:
            return float(params[key]) if key in params else None
        except ValueError:
            return None

    try:
        return ChatLink(
            items=items, muscle_biopsy=biopsy, age_at_onset=number("age"), score=number("score")
        )
    except ValidationError:
        return None


# --- the tab ---------------------------------------------------------------------------------


@dataclass
class CalculatorTab:
    """The tab's components, for wiring the chat link in ``build_app``."""

    handlers: CalculatorHandlers
    outputs: list[Any]

    def link_chat(self, chatbot: gr.Chatbot) -> None:
        """Clicking the calculator option under an answer opens this tab, filled in."""
        chatbot.option_select(
            self.handlers.from_option,
            None,
            self.outputs,
            api_visibility="private",
            concurrency_limit=None,
        )


def add_calculator_tab(
    demo: gr.Blocks, settings: Settings, tabs: gr.Tabs, calculator: Calculator | None = None
) -> CalculatorTab:
    """The "Classification calculator" tab (call inside ``with gr.Tabs()``)."""
    calculator = calculator or Calculator(settings.paths.index_dir)
    handlers = CalculatorHandlers(calculator)
    table = calculator.table
    with gr.Tab("Classification calculator", id=TAB_ID, elem_id="myoqa-calc-tab"):
        gr.HTML(
            f'<div class="myoqa-disclaimer" role="note"><strong>{_text(table.criteria)}.</strong> '
            f"{_text(EDUCATIONAL_USE)} Every weight and cut-off below links to the corpus passage "
            "that states it.</div>"
        )
        with gr.Row():
            age = gr.Number(
                label="Age at onset of the first symptom (years)",
                value=None,
                placeholder="e.g. 45",
                precision=None,
                elem_id="myoqa-calc-age",
            )
            biopsy = gr.Checkbox(
                label="A muscle biopsy was done (use the weights with biopsy)",
                value=False,
                elem_id="myoqa-calc-muscle-biopsy",
            )
        groups = []
        for title, names in GROUPS:
            groups.append(
                gr.CheckboxGroup(
                    choices=[(table.item(i).label, i) for i in _group_ids(table, names)],
                    label=title,
                    elem_id=f"myoqa-calc-{names[0]}",
                )
            )
        with gr.Row():
            calculate = gr.Button("Calculate", variant="primary", elem_id="myoqa-calc-go")
            reset = gr.Button("Clear", variant="secondary", elem_id="myoqa-calc-clear")
        with gr.Row(equal_height=True):
            score = gr.Number(
                label="Or: what does a total score mean? (uses the biopsy box above)",
                value=None,
                placeholder="e.g. 6.0",
                precision=None,
                elem_id="myoqa-calc-score-input",
            )
            lookup = gr.Button("Look up the score", elem_id="myoqa-calc-lookup")
        result = gr.HTML(elem_id="myoqa-calc-output")
        with gr.Accordion("All items, both weights and where they are stated", open=False):
            gr.HTML(render_reference(table))
    # queued (so a gr.Error shows as a toast) but never waiting behind an answer
    cheap: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": None}
    calculate.click(handlers.calculate, [age, biopsy, *groups], [result], **cheap)
    lookup.click(handlers.lookup, [score, biopsy], [result], **cheap)
    reset.click(handlers.clear, None, [age, biopsy, *groups, score, result], **cheap)
    outputs = [tabs, age, biopsy, *groups, score, result]
    demo.load(handlers.from_query, None, outputs, **cheap)
    return CalculatorTab(handlers=handlers, outputs=outputs)
