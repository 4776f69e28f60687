"""The 2017 EULAR/ACR classification criteria for IIM as a calculator, with every weight cited.

Pure functions over one data table (``data/eular_acr_2017.json``): each score item,
score cut-off and rule is a row carrying the corpus ``chunk_id`` of the passage that
states it and a short exact quote from that passage. Every number a result shows is
a cited weight or cut-off, or a sum (or difference) of them; no probability is
computed from a formula the corpus does not state.

- ``classify(case)`` scores a case: total score, probability band, category, the
  distance to the next cut-off, the rule that skin signs or biopsy features are
  needed, and the reminder to apply the criteria only without a better explanation.
- ``score_band(score, muscle_biopsy)`` says what a total score means.
- ``chat_link(question)`` recognises a question about what an item scores or what a
  score means, for the chat's "open in the calculator" link.
- ``attach_citations(result, chunks, records)`` adds the full cited passages.

It is an educational tool for classification (research and teaching), not a
diagnostic device.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from importlib import resources
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.qa.schema import Citation
from indexer.bibliography import Reference
from indexer.chunking import Chunk
from indexer.errors import MyoQAError
from indexer.sources import SourceRecord

TABLE_RESOURCE = "data/eular_acr_2017.json"

#: Shown with every result (the tab, the API and the CLI).
EDUCATIONAL_USE = (
    "Educational tool for the 2017 EULAR/ACR classification criteria (research and teaching): "
    "not a diagnostic device and not for decisions about a patient."
)
#: Said instead of a subgroup: the corpus names the subgroups but not the tree's rules.
SUBGROUP_NOT_COVERED = (
    "Subgroup classification is not covered: the indexed literature names the classification "
    "tree's subgroups but does not state its rules, so this calculator does not assign one."
)

Group = Literal["age", "weakness", "skin", "other", "laboratory", "biopsy"]
CategoryId = Literal["not_iim", "possible", "probable", "definite", "not_classifiable"]

CATEGORY_LABELS: dict[str, str] = {
    "not_iim": "not IIM",
    "possible": "possible IIM",
    "probable": "probable IIM",
    "definite": "definite IIM",
    "not_classifiable": "not classifiable",
}
_REQUIRED_STATEMENTS = (
    "possible_band",
    "rule_out_band",
    "probable_is_minimum",
    "no_better_explanation",
    "skin_or_biopsy_features",
    "biopsy_items_need_biopsy",
    "one_age_item",
    "subgroup_tree",
    "for_research",
)
_CUTOFF_IDS = ("possible", "probable", "definite")
#: Oldest plausible age at onset, in years (beyond it the input is a typo).
MAX_AGE = 120


# --- the table ---------------------------------------------------------------------------


class CitedRow(BaseModel):
    """Where a row is stated: fact number, corpus source, chunk and an exact quote."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    fact: int = Field(ge=1, description="Number of the fact in the domain fact sheet.")
    source_id: str
    chunk_id: str
    quote: str = Field(min_length=10, description="Exact text of the cited passage.")


class ItemRow(CitedRow):
    """One score item with its weight without and with a muscle biopsy."""

    group: Group
    label: str
    without_biopsy: float | None = Field(description="None: scored only with a biopsy.")
    with_biopsy: float
    min_age: float | None = None
    below_age: float | None = None
    terms: list[str] = Field(default_factory=list, description="How questions name the item.")

    def weight(self, muscle_biopsy: bool) -> float | None:
        return self.with_biopsy if muscle_biopsy else self.without_biopsy


class CutoffRow(CitedRow):
    """A probability cut-off and the total scores it corresponds to."""

    category: str
    probability: str
    without_biopsy: float
    with_biopsy: float

    def score(self, muscle_biopsy: bool) -> float:
        return self.with_biopsy if muscle_biopsy else self.without_biopsy


class StatementRow(CitedRow):
    """A rule or statement the calculator applies or shows."""


class CriteriaTable(BaseModel):
    """The whole table; loaded once from the package data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    criteria: str
    about: str = ""
    items: list[ItemRow]
    cutoffs: list[CutoffRow]
    statements: list[StatementRow]

    @model_validator(mode="after")
    def _consistent(self) -> CriteriaTable:
        ids = [r.id for r in [*self.items, *self.cutoffs, *self.statements]]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate row ids: {duplicates}")
        if tuple(c.id for c in self.cutoffs) != _CUTOFF_IDS:
            raise ValueError(f"cutoffs must be {_CUTOFF_IDS} in that order")
        for muscle_biopsy in (False, True):
            scores = [c.score(muscle_biopsy) for c in self.cutoffs]
            if scores != sorted(scores):
                raise ValueError("cut-off scores must increase")
        missing = set(_REQUIRED_STATEMENTS) - {s.id for s in self.statements}
        if missing:
            raise ValueError(f"missing statements: {sorted(missing)}")
        for item in self.items:
            if (item.group == "biopsy") != (item.without_biopsy is None):
                raise ValueError(f"{item.id}: only biopsy items lack a weight without biopsy")
            if (item.group == "age") != (item.min_age is not None):
                raise ValueError(f"{item.id}: age items, and only they, need min_age")
        return self

    def item(self, item_id: str) -> ItemRow:
        return next(i for i in self.items if i.id == item_id)

    def statement(self, statement_id: str) -> StatementRow:
        return next(s for s in self.statements if s.id == statement_id)

    def cutoff(self, cutoff_id: str) -> CutoffRow:
        return next(c for c in self.cutoffs if c.id == cutoff_id)

    def rows(self) -> list[CitedRow]:
        """Every cited row: items, cut-offs, statements."""
        return [*self.items, *self.cutoffs, *self.statements]

    def scored_items(self) -> list[ItemRow]:
        """The items a user ticks (age comes from the age at onset)."""
        return [i for i in self.items if i.group != "age"]

    def max_score(self, muscle_biopsy: bool) -> float:
        """Highest reachable total: the larger age item plus every other item."""
        ages = [i.weight(muscle_biopsy) or 0.0 for i in self.items if i.group == "age"]
        rest = [i.weight(muscle_biopsy) or 0.0 for i in self.scored_items()]
        return _sum([max(ages, default=0.0), *rest])


def parse_table(data: Mapping[str, Any]) -> CriteriaTable:
    """Validate table data (a dict as in the JSON file)."""
    return CriteriaTable.model_validate(data)


@functools.cache
def load_table() -> CriteriaTable:
    """The bundled table (read on first use, then cached)."""
    text = resources.files("app.qa").joinpath(TABLE_RESOURCE).read_text("utf-8")
    return parse_table(json.loads(text))


# --- a case ---------------------------------------------------------------------------


class Case(BaseModel):
    """One patient's findings. The item fields are exactly the table's non-age item ids."""

    model_config = ConfigDict(extra="forbid", strict=True)

    age_at_onset: float = Field(description="Age in years at the first symptom (18 or more).")
    muscle_biopsy: bool = Field(
        default=False, description="A muscle biopsy was done (the weights with biopsy apply)."
    )
    weakness_upper_proximal: bool = Field(
        default=False, description="Objective symmetric weakness of the proximal upper limbs."
    )
    weakness_lower_proximal: bool = Field(
        default=False, description="Objective weakness of the proximal lower limbs."
    )
    neck_flexors_weaker: bool = Field(
        default=False, description="Neck flexors relatively weaker than neck extensors."
    )
    legs_proximal_weaker_than_distal: bool = Field(
        default=False, description="In the legs, proximal muscles relatively weaker than distal."
    )
    heliotrope_rash: bool = Field(default=False, description="Heliotrope rash.")
    gottrons_papules: bool = Field(default=False, description="Gottron's papules.")
    gottrons_sign: bool = Field(default=False, description="Gottron's sign.")
    dysphagia: bool = Field(default=False, description="Dysphagia or oesophageal dysmotility.")
    anti_jo1: bool = Field(default=False, description="Anti-Jo-1 antibody positive.")
    raised_muscle_enzymes: bool = Field(
        default=False, description="CK, LDH, AST or ALT above the upper limit of normal."
    )
    endomysial_infiltrate: bool = Field(
        default=False,
        description="Biopsy: endomysial mononuclear cells surrounding, not invading, myofibres.",
    )
    perimysial_perivascular_infiltrate: bool = Field(
        default=False, description="Biopsy: perimysial and/or perivascular mononuclear cells."
    )
    perifascicular_atrophy: bool = Field(
        default=False, description="Biopsy: perifascicular atrophy."
    )
    rimmed_vacuoles: bool = Field(default=False, description="Biopsy: rimmed vacuoles.")

    def present(self) -> list[str]:
        """Ids of the items ticked (age not included)."""
        return [
            name
            for name in ITEM_FIELDS
            if getattr(self, name) is True  # fields are strict bools
        ]


#: The case fields that are items, in table order.
ITEM_FIELDS: tuple[str, ...] = tuple(
    name for name in Case.model_fields if name not in ("age_at_onset", "muscle_biopsy")
)


# --- a result ---------------------------------------------------------------------------


class Cite(BaseModel):
    """A cited number or rule in a result; ``cite`` is the number of its entry in ``citations``."""

    model_config = ConfigDict(extra="forbid")

    fact: int
    source_id: str
    chunk_id: str
    quote: str
    cite: int | None = None


class ScoredItem(Cite):
    id: str
    label: str
    group: str
    weight: float


class CutoffView(Cite):
    id: str
    category: str
    probability: str
    score: float
    met: bool


class Band(BaseModel):
    """The probability band the cited cut-offs give for a total score."""

    model_config = ConfigDict(extra="forbid")

    id: Literal["not_iim", "possible", "probable", "definite"]
    probability: str
    label: str


class NextCutoff(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    probability: str
    score: float
    distance: float = Field(description="Points still needed to reach this cut-off.")


class Note(Cite):
    id: str
    text: str


class ScoreBand(BaseModel):
    """What a total score means: its band and the distance to the next cut-off."""

    model_config = ConfigDict(extra="forbid")

    score: float
    muscle_biopsy: bool
    column: str
    band: Band
    next_cutoff: NextCutoff | None
    cutoffs: list[CutoffView]
    notes: list[Note]
    disclaimer: str = EDUCATIONAL_USE
    citations: list[Citation] = Field(default_factory=list)


class Classification(ScoreBand):
    """A scored case: the items that scored, the total, band, category and notes."""

    criteria: str
    age_at_onset: float
    items: list[ScoredItem]
    category: CategoryId
    category_label: str
    classifiable: bool = Field(
        description="False when neither a DM skin sign nor a biopsy feature is present."
    )
    meets_minimum: bool = Field(description="Probable or definite IIM (the recommended minimum).")
    subgroup: str = SUBGROUP_NOT_COVERED


# --- arithmetic -------------------------------------------------------------------------


def _dec(value: float) -> Decimal:
    """Weights have one decimal; Decimal keeps 5.3 exactly 5.3 when summed."""
    return Decimal(str(value))


def _sum(values: Sequence[float]) -> float:
    return float(sum((_dec(v) for v in values), Decimal(0)))


def _column(muscle_biopsy: bool) -> str:
    return "with muscle biopsy" if muscle_biopsy else "without muscle biopsy"


def _cite_fields(row: CitedRow) -> dict[str, Any]:
    return {
        "fact": row.fact,
        "source_id": row.source_id,
        "chunk_id": row.chunk_id,
        "quote": row.quote,
    }


def _note(row: StatementRow, text: str) -> Note:
    return Note(id=row.id, text=text, **_cite_fields(row))


def score_band(score: float, muscle_biopsy: bool, table: CriteriaTable | None = None) -> ScoreBand:
    """The band a total score falls in, and how far the next cut-off is.

    Raises:
        MyoQAError: For a score below 0, not a number, or above the highest reachable total.
    """
    table = table or load_table()
    if not isinstance(score, int | float) or isinstance(score, bool) or math.isnan(score):
        raise MyoQAError("The total score must be a number, e.g. 6.0.")
    highest = table.max_score(muscle_biopsy)
    if score < 0 or score > highest:
        raise MyoQAError(
            f"A total score of {score:g} cannot be reached {_column(muscle_biopsy)}: "
            f"scores run from 0 to {highest:g}."
        )
    result = _band_result(_dec(score), muscle_biopsy, table)
    result.notes = [
        _note(
            table.statement("no_better_explanation"),
            "Apply the criteria only when no better explanation for the symptoms and signs exists.",
        ),
        *result.notes,
        _note(
            table.statement("skin_or_biopsy_features"),
            "A score alone does not show the findings: without heliotrope rash, Gottron's "
            "papules or Gottron's sign, muscle-biopsy features are needed to classify a "
            "patient as IIM.",
        ),
    ]
    return result


def _band_result(total: Decimal, muscle_biopsy: bool, table: CriteriaTable) -> ScoreBand:
    views = [
        CutoffView(
            id=c.id,
            category=c.category,
            probability=c.probability,
            score=c.score(muscle_biopsy),
            met=total >= _dec(c.score(muscle_biopsy)),
            **_cite_fields(c),
        )
        for c in table.cutoffs
    ]
    possible, probable, definite = (table.cutoff(i) for i in _CUTOFF_IDS)
    rule_out = table.statement("rule_out_band")
    if total >= _dec(definite.score(muscle_biopsy)):
        band = Band(id="definite", probability=definite.probability, label=definite.category)
        note = _note(
            table.statement("probable_is_minimum"),
            "Meets the recommended minimum for classification (probable IIM or higher).",
        )
    elif total >= _dec(probable.score(muscle_biopsy)):
        band = Band(
            id="probable",
            probability=f"{probable.probability} and <{definite.probability.lstrip('≥')}",
            label=probable.category,
        )
        note = _note(
            table.statement("probable_is_minimum"),
            "Meets the recommended minimum for classification (probable IIM).",
        )
    elif total >= _dec(possible.score(muscle_biopsy)):
        band = Band(id="possible", probability=possible.probability, label=possible.category)
        note = _note(
            table.statement("possible_band"),
            "Possible IIM is below the recommended minimum for classification (probable IIM).",
        )
    else:
        band = Band(
            id="not_iim",
            probability=f"<{possible.probability.split(' ')[0]}",
            label="not IIM",
        )
        note = _note(rule_out, "A probability below 50% rules IIM out for classification purposes.")
    following = next((v for v in views if not v.met), None)
    next_cutoff = (
        NextCutoff(
            id=following.id,
            category=following.category,
            probability=following.probability,
            score=following.score,
            distance=float(_dec(following.score) - total),
        )
        if following is not None
        else None
    )
    return ScoreBand(
        score=float(total),
        muscle_biopsy=muscle_biopsy,
        column=_column(muscle_biopsy),
        band=band,
        next_cutoff=next_cutoff,
        cutoffs=views,
        notes=[note],
    )


def validate_case(case: Case, table: CriteriaTable) -> ItemRow:
    """Check a case and return its age item.

    Raises:
        MyoQAError: Age at onset out of range, or biopsy items without a muscle biopsy.
    """
    age = case.age_at_onset
    if math.isnan(age) or math.isinf(age):
        raise MyoQAError("The age at onset must be a number of years, e.g. 45.")
    age_items = [i for i in table.items if i.group == "age"]
    youngest = min(i.min_age or 0.0 for i in age_items)
    if age < youngest:
        ranges = " and ".join(
            i.label.removeprefix("Age at onset of the first symptom ") for i in age_items
        )
        raise MyoQAError(
            f"An age at onset of {age:g} years is out of range: the indexed criteria passages "
            f"give age-at-onset weights only for {ranges}, so an onset before {youngest:g} "
            "years cannot be scored here."
        )
    if age > MAX_AGE:
        raise MyoQAError(
            f"An age at onset of {age:g} years is out of range ({youngest:g} to {MAX_AGE}); "
            "enter the age in years at the first symptom."
        )
    matched = [
        i
        for i in age_items
        if age >= (i.min_age or 0.0) and (i.below_age is None or age < i.below_age)
    ]
    if len(matched) != 1:  # the table's age ranges must tile [18, inf)
        raise MyoQAError(f"No single age-at-onset item applies to {age:g} years.")
    if not case.muscle_biopsy:
        given = [table.item(i).label for i in case.present() if table.item(i).group == "biopsy"]
        if given:
            raise MyoQAError(
                f"Biopsy items were given without a muscle biopsy ({'; '.join(given)}): "
                "mark that a muscle biopsy was done, or remove them. The biopsy items are "
                "scored only when a biopsy is available."
            )
    return matched[0]


def classify(case: Case, table: CriteriaTable | None = None) -> Classification:
    """Score a case with the weights of its column (with or without muscle biopsy).

    Raises:
        MyoQAError: For an age out of range or biopsy items without a biopsy.
    """
    table = table or load_table()
    age_item = validate_case(case, table)
    biopsy = case.muscle_biopsy
    rows = [age_item, *(table.item(i) for i in case.present())]
    scored = []
    for row in rows:
        weight = row.weight(biopsy)
        if weight is None:  # unreachable after validate_case
            raise MyoQAError(f"{row.label} is scored only with a muscle biopsy.")
        scored.append(
            ScoredItem(
                id=row.id, label=row.label, group=row.group, weight=weight, **_cite_fields(row)
            )
        )
    total = sum((_dec(s.weight) for s in scored), Decimal(0))
    banded = _band_result(total, biopsy, table)

    skin = any(s.group == "skin" for s in scored)
    biopsy_features = any(s.group == "biopsy" for s in scored)
    classifiable = skin or biopsy_features
    notes = [
        _note(
            table.statement("no_better_explanation"),
            "Apply the criteria only when no better explanation for the symptoms and signs exists.",
        )
    ]
    if classifiable:
        category: CategoryId = banded.band.id
        notes.extend(banded.notes)
    else:
        category = "not_classifiable"
        why = (
            "no muscle biopsy was entered"
            if not biopsy
            else "the biopsy entered shows none of the biopsy features"
        )
        notes.append(
            _note(
                table.statement("skin_or_biopsy_features"),
                "Not classifiable: without heliotrope rash, Gottron's papules or Gottron's sign, "
                f"muscle-biopsy features are needed to classify a patient as IIM, and {why}.",
            )
        )
    notes.append(_note(table.statement("subgroup_tree"), SUBGROUP_NOT_COVERED))
    notes.append(_note(table.statement("for_research"), EDUCATIONAL_USE))
    return Classification(
        criteria=table.criteria,
        age_at_onset=case.age_at_onset,
        items=scored,
        category=category,
        category_label=CATEGORY_LABELS[category],
        classifiable=classifiable,
        meets_minimum=category in ("probable", "definite"),
        **{**banded.model_dump(exclude={"notes", "citations"}), "notes": notes},
    )


# --- citations -------------------------------------------------------------------------------

R = TypeVar("R", bound=ScoreBand)


def make_citation(
    n: int,
    chunk: Chunk,
    record: SourceRecord,
    quotes: Sequence[str],
    references: Mapping[str, Reference] | None = None,
) -> Citation:
    """Citation ``n`` for a passage, as the chat builds it, highlighting ``quotes``.

    Like the chat, it names the primary reference of the quoted sentences (their first
    bibliography key) and keeps the document's own record as where the passage sits.
    """
    keys: list[str] = []
    for quote in quotes or [chunk.text]:
        keys.extend(k for k in chunk.sources_of(quote) if k not in keys)
    if not keys:
        keys = [k for group in chunk.sentence_sources for k in group]
    ref = next((references[k] for k in keys if references and k in references), None)
    return Citation(
        n=n,
        source_id=chunk.source_id,
        title=ref.title if ref else record.title,
        authors=ref.authors if ref else record.authors,
        journal=ref.journal if ref else record.journal,
        year=ref.year if ref else record.year,
        doi=ref.doi if ref else record.doi,
        pmid=ref.pmid if ref else record.pmid,
        pmcid=ref.pmcid if ref else record.pmcid,
        url=ref.url if ref else record.url,
        section=chunk.section,
        page=chunk.page_start,
        page_end=chunk.page_end,
        chunk_id=chunk.chunk_id,
        passage=chunk.text,
        highlights=[q for q in quotes if q in chunk.text],
        reference_key=ref.key if ref else "",
        reference_keys=keys,
        digest_title=record.title if ref else "",
    )


def attach_citations(
    result: R,
    chunks: Mapping[str, Chunk],
    records: Mapping[str, SourceRecord],
    references: Mapping[str, Reference] | None = None,
) -> R:
    """A copy of ``result`` whose cited rows point (``cite``) into full ``citations``.

    Rows whose chunk is not in ``chunks`` keep ``cite=None`` (their quote still shows).
    """
    result = result.model_copy(deep=True)
    numbers: dict[str, int] = {}
    citations: list[Citation] = []
    rows: list[Cite] = [*getattr(result, "items", []), *result.cutoffs, *result.notes]
    for row in rows:
        chunk = chunks.get(row.chunk_id)
        record = records.get(row.source_id)
        if chunk is None or record is None:
            continue
        if row.chunk_id not in numbers:
            numbers[row.chunk_id] = len(citations) + 1
            citations.append(
                make_citation(numbers[row.chunk_id], chunk, record, [row.quote], references)
            )
        citation = citations[numbers[row.chunk_id] - 1]
        if row.quote in chunk.text and row.quote not in citation.highlights:
            citation.highlights.append(row.quote)
        row.cite = numbers[row.chunk_id]
    result.citations = citations
    return result


# --- the chat link --------------------------------------------------------------------


class ChatLink(BaseModel):
    """What a chat question asks the calculator: items to tick, the biopsy column, a score."""

    model_config = ConfigDict(extra="forbid")

    items: list[str] = Field(default_factory=list)
    age_at_onset: float | None = None
    muscle_biopsy: bool | None = None
    score: float | None = None

    def label(self, table: CriteriaTable | None = None) -> str:
        table = table or load_table()
        parts = [
            i.label
            for i in table.items
            if i.group == "age"
            and self.age_at_onset is not None
            and self.age_at_onset >= (i.min_age or 0.0)
            and (i.below_age is None or self.age_at_onset < i.below_age)
        ]
        parts.extend(table.item(i).label for i in self.items)
        if self.score is not None:
            parts.append(f"total score {self.score:.1f}")
        if self.muscle_biopsy is not None:
            parts.append(_column(self.muscle_biopsy))
        return "Open in the classification calculator: " + ", ".join(parts)


_ASKS_SCORE = re.compile(
    r"\b(points?|scor\w*|weight\w*|worth|count\w*|eular|acr|classif\w*|criteri\w*|probable|"
    r"possible|definite)\b",
    re.I,
)
_WITHOUT_BIOPSY = re.compile(
    r"(\b(without|no|absent|missing|lacking)|\bw/o)[\s-]+(a\s+|any\s+)?(muscle\s+)?biops", re.I
)
_WITH_BIOPSY = re.compile(
    r"\bwith\s+(a\s+|the\s+)?(muscle\s+)?biops"
    r"|\b(have|has|had)\s+(a\s+)?(muscle\s+)?biops"
    r"|\bbiops\w*\s+(data|results?|findings|column)"
    r"|\bbiops\w*\s+((is|was|were|are)\s+)?(done|available|performed|used)",
    re.I,
)
#: "no heliotrope", "without Gottron's papules or Gottron's sign": the item is absent.
_NEGATOR = re.compile(r"\b(no|not|without|absent|lacking|none of)\b", re.I)
_CONNECTORS = re.compile(r"\b(or|and|nor|an?|the|any|either|neither)\b|[,/\s]", re.I)
_SCORE_VALUE = re.compile(
    r"\b(?:score\s+(?:of\s+)?)?(\d{1,2}(?:\.\d)?)\b(?!\s*(?:%|years?|yrs?|y\b|mg|g\b))"
)
_AGE_IN_QUESTION = re.compile(r"\bage|onset|years?\b|\bold\b", re.I)


def _plain(text: str) -> str:
    """Typographic apostrophes as plain ones (Gottron’s -> Gottron's)."""
    return text.replace("\u2019", "'")


def _term_patterns(table: CriteriaTable) -> list[tuple[str, re.Pattern[str]]]:
    """(item id, pattern) for every way a question may name an item (``re`` caches them)."""
    return [
        (item.id, re.compile(rf"(?<![\w-]){re.escape(_plain(term))}(?![\w-])", re.I))
        for item in table.items
        for term in item.terms
    ]


def _negated(before: str, table: CriteriaTable) -> bool:
    """Whether the text just before an item names its absence ("no heliotrope or ...")."""
    negators = list(_NEGATOR.finditer(before))
    if not negators:
        return False
    between = before[negators[-1].end() :]
    for _, pattern in _term_patterns(table):
        between = pattern.sub(" ", between)
    return not _CONNECTORS.sub("", between)


def chat_link(question: str, table: CriteriaTable | None = None) -> ChatLink | None:
    """The calculator link for a question about what an item scores or what a score means.

    "How many points is Gottron's sign without a biopsy?" -> Gottron's sign, without biopsy;
    "Is 6.0 without biopsy probable IIM?" -> total score 6.0, without biopsy. None when the
    question is not about scoring.
    """
    table = table or load_table()
    text = _plain(question)
    if not _ASKS_SCORE.search(text):
        return None
    found: list[str] = []
    for item_id, pattern in _term_patterns(table):
        match = pattern.search(text)
        if item_id in found or match is None:
            continue
        if _negated(text[: match.start()], table):
            continue
        found.append(item_id)
    age_items = [i for i in found if table.item(i).group == "age"]
    if age_items and not _AGE_IN_QUESTION.search(text):
        found = [i for i in found if i not in age_items]
        age_items = []
    biopsy: bool | None = None
    if _WITHOUT_BIOPSY.search(text):
        biopsy = False
    elif _WITH_BIOPSY.search(text) or any(table.item(i).group == "biopsy" for i in found):
        biopsy = True
    score: float | None = None
    if not found:
        match = _SCORE_VALUE.search(text)
        if match and re.search(
            r"\b(probable|possible|definite|mean\w*|band|categor\w*|classif\w*|iim)\b", text, re.I
        ):
            score = float(match.group(1))
        else:
            return None
    age = table.item(age_items[0]).min_age if len(age_items) == 1 else None
    items = [i for i in found if table.item(i).group != "age"]
    if biopsy is False and any(table.item(i).group == "biopsy" for i in items):
        biopsy = True
    return ChatLink(items=items, age_at_onset=age, muscle_biopsy=biopsy, score=score)
