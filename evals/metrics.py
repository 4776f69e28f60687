"""Metrics: small pure functions, each pinned by tests/test_metrics.py.

Every function validates its inputs first and raises ``ValueError`` for a call
that makes no sense (an empty gold list, ``k < 1``, no latencies); a metric that
has nothing to measure in a whole run is reported as ``None``, not as 0 or 1.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from app.qa.policy import GENERAL_GUIDANCE_INTRO, NOT_REPORTED_INTRO, PERSONAL_ADVICE, REFUSAL
from app.qa.verify import DraftSentence, cited_numbers, parse_cited_sentences, strip_citations
from evals.judge import SupportJudge
from indexer.text import numbers_in

KeyFact = str | Sequence[str]

#: Policy wording the chain adds around cited content; it is not a claim to verify.
POLICY_PHRASES: tuple[str, ...] = (
    PERSONAL_ADVICE,
    GENERAL_GUIDANCE_INTRO,
    NOT_REPORTED_INTRO,
    REFUSAL,
)

# --- retrieval ---------------------------------------------------------------------


def _check_retrieval(gold: Collection[str], k: int | None = None) -> None:
    if not gold:
        raise ValueError("gold_sources is empty: retrieval metrics need at least one gold source")
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def first_gold_rank(retrieved_sources: Sequence[str], gold: Collection[str]) -> int | None:
    """1-based rank of the first retrieved passage whose source is gold; None when none is."""
    _check_retrieval(gold)
    for rank, source in enumerate(retrieved_sources, start=1):
        if source in gold:
            return rank
    return None


def recall_at_k(retrieved_sources: Sequence[str], gold: Collection[str], k: int) -> float:
    """1.0 when any gold source is among the first ``k`` retrieved passages, else 0.0.

    ``gold_sources`` lists the sources that each state the answer, so retrieving
    one of them is enough; :func:`coverage_at_k` is the stricter per-source share.
    """
    _check_retrieval(gold, k)
    return 1.0 if any(source in gold for source in retrieved_sources[:k]) else 0.0


def coverage_at_k(retrieved_sources: Sequence[str], gold: Collection[str], k: int) -> float:
    """Share of the gold sources found among the first ``k`` retrieved passages."""
    _check_retrieval(gold, k)
    found = set(retrieved_sources[:k]) & set(gold)
    return len(found) / len(set(gold))


def reciprocal_rank(retrieved_sources: Sequence[str], gold: Collection[str]) -> float:
    """1 / rank of the first gold passage (0.0 when no gold source is retrieved); MRR is its mean."""
    rank = first_gold_rank(retrieved_sources, gold)
    return 0.0 if rank is None else 1.0 / rank


# --- key facts ---------------------------------------------------------------------

_DASHES = re.compile(r"[\u2010-\u2015\u2212]")
_SPACES = re.compile(r"\s+")


def normalise_for_match(text: str) -> str:
    """NFKC, case-folded, Unicode dashes as ``-``, runs of whitespace as one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", _DASHES.sub("-", text)).strip()


def missing_key_facts(answer_text: str, must_contain: Sequence[KeyFact]) -> list[KeyFact]:
    """The ``must_contain`` items of which no alternative occurs in the answer.

    Matching is a case-insensitive substring test on the answer with its ``[n]``
    markers removed (so a key fact ``"1"`` is not satisfied by ``[1]``).
    """
    haystack = normalise_for_match(strip_citations(answer_text))
    missing: list[KeyFact] = []
    for item in must_contain:
        alternatives = [item] if isinstance(item, str) else list(item)
        if not alternatives:
            raise ValueError("a must_contain item is an empty list of alternatives")
        if not any(normalise_for_match(alt) in haystack for alt in alternatives):
            missing.append(item)
    return missing


def key_facts_present(answer_text: str, must_contain: Sequence[KeyFact]) -> bool:
    """True when every ``must_contain`` item is in the answer (see :func:`missing_key_facts`)."""
    return not missing_key_facts(answer_text, must_contain)


# --- citations ---------------------------------------------------------------------


def citation_problems(answer_text: str, citation_numbers: Sequence[int]) -> list[str]:
    """Why the citations of an answer break the contract; empty when they are valid.

    Valid means: every ``[n]`` in the text resolves to a citation, every citation
    is used in the text, and the citations are numbered 1..n without gaps or repeats.
    """
    problems: list[str] = []
    listed = list(citation_numbers)
    repeated = sorted({n for n in listed if listed.count(n) > 1})
    if repeated:
        problems.append(f"citation numbers listed more than once: {repeated}")
    expected = list(range(1, len(set(listed)) + 1))
    if sorted(set(listed)) != expected:
        problems.append(f"citations numbered {sorted(set(listed))}, expected {expected}")
    used = set(cited_numbers(answer_text))
    dangling = sorted(used - set(listed))
    if dangling:
        problems.append(f"markers with no citation: {', '.join(f'[{n}]' for n in dangling)}")
    unused = sorted(set(listed) - used)
    if unused:
        problems.append(f"citations never cited in the text: {unused}")
    return problems


def strip_policy_phrases(answer_text: str) -> str:
    """The answer without the chain's fixed refusal and guidance wording."""
    for phrase in POLICY_PHRASES:
        answer_text = answer_text.replace(phrase, " ")
    return _SPACES.sub(" ", answer_text).strip()


def claim_sentences(answer_text: str, abstained: bool = False) -> list[DraftSentence]:
    """The sentences of an answer that state something, with the ``[n]`` each cites.

    The chain's fixed policy wording is not a claim. In an abstention, only cited
    sentences are claims (the general guidance); the rest explains the refusal.
    In an answer, an uncited sentence is a claim (and fails citation recall).
    """
    sentences = parse_cited_sentences(strip_policy_phrases(answer_text))
    if abstained:
        return [s for s in sentences if s.cites]
    return sentences


def ungrounded_numbers(
    sentences: Sequence[DraftSentence], passages: Mapping[int, str]
) -> list[tuple[str, list[str]]]:
    """Each sentence stating a number that none of its cited passages contains.

    ``passages`` maps citation number to passage text. A sentence citing nothing
    is checked against every cited passage of the answer; a marker that resolves
    to no passage contributes no text.
    """
    out: list[tuple[str, list[str]]] = []
    for sentence in sentences:
        keys = sentence.cites or tuple(passages)
        available: set[str] = set()
        for key in keys:
            available |= numbers_in(passages.get(key, ""))
        missing = sorted(numbers_in(sentence.text) - available)
        if missing:
            out.append((sentence.text, missing))
    return out


def numbers_grounded(sentences: Sequence[DraftSentence], passages: Mapping[int, str]) -> bool:
    """True when every number of every sentence occurs in a passage it cites."""
    return not ungrounded_numbers(sentences, passages)


@dataclass
class SentenceVerdict:
    """The support judge's verdict on one sentence and on each of its citations.

    Attributes:
        sentence: the sentence, without markers.
        cites: the citation numbers it carries.
        supported: the union of its cited passages supports it (citation recall).
        score: the judge's score for that union.
        reason: the judge's explanation when unsupported.
        relevant: per citation, whether it is needed or sufficient (citation precision).
    """

    sentence: str
    cites: tuple[int, ...]
    supported: bool
    score: float
    reason: str = ""
    relevant: dict[int, bool] = field(default_factory=dict)


def judge_sentences(
    sentences: Sequence[DraftSentence], passages: Mapping[int, str], judge: SupportJudge
) -> list[SentenceVerdict]:
    """ALCE-style verdicts for each sentence of an answer.

    A sentence is supported when the judge accepts it against the union of its
    cited passages (a sentence citing nothing is unsupported). A citation of a
    supported sentence is relevant when it supports the sentence alone or when
    the others fail without it; every citation of an unsupported sentence is
    irrelevant. A marker that resolves to no passage counts as an empty passage.
    """
    verdicts: list[SentenceVerdict] = []
    for sentence in sentences:
        cites = tuple(dict.fromkeys(sentence.cites))
        if not cites:
            verdicts.append(SentenceVerdict(sentence.text, cites, False, 0.0, "cites nothing"))
            continue
        texts = {n: passages.get(n, "") for n in cites}
        union = judge.judge(sentence.text, list(texts.values()))
        verdict = SentenceVerdict(sentence.text, cites, union.supported, union.score, union.reason)
        for n in cites:
            if not union.supported:
                verdict.relevant[n] = False
            elif len(cites) == 1 or judge.judge(sentence.text, [texts[n]]).supported:
                verdict.relevant[n] = True
            else:
                rest = [texts[m] for m in cites if m != n]
                verdict.relevant[n] = not judge.judge(sentence.text, rest).supported
        verdicts.append(verdict)
    return verdicts


def citation_recall(verdicts: Sequence[SentenceVerdict]) -> float | None:
    """Share of an answer's claim sentences supported by their citations; None without any."""
    if not verdicts:
        return None
    return sum(v.supported for v in verdicts) / len(verdicts)


def citation_precision(verdicts: Sequence[SentenceVerdict]) -> float | None:
    """Share of an answer's citation markers that are relevant; None when it cites nothing."""
    flags = [flag for v in verdicts for flag in v.relevant.values()]
    if not flags:
        return None
    return sum(flags) / len(flags)


# --- abstention --------------------------------------------------------------------


@dataclass(frozen=True)
class AbstentionScores:
    """Abstention on out-of-scope questions (the positive class) and on in-scope ones.

    Attributes:
        precision: share of abstentions that were on out-of-scope questions.
        recall: share of out-of-scope questions abstained on.
        false_abstention_rate: share of in-scope questions abstained on.
    """

    precision: float | None
    recall: float | None
    false_abstention_rate: float | None


def abstention_scores(outcomes: Iterable[tuple[bool, bool]]) -> AbstentionScores:
    """Scores from ``(in_scope, abstained)`` pairs, one per question; None where undefined."""
    pairs = list(outcomes)
    abstained_out = sum(1 for in_scope, abstained in pairs if abstained and not in_scope)
    abstained_in = sum(1 for in_scope, abstained in pairs if abstained and in_scope)
    n_out = sum(1 for in_scope, _ in pairs if not in_scope)
    n_in = len(pairs) - n_out
    n_abstained = abstained_out + abstained_in
    return AbstentionScores(
        precision=abstained_out / n_abstained if n_abstained else None,
        recall=abstained_out / n_out if n_out else None,
        false_abstention_rate=abstained_in / n_in if n_in else None,
    )


# --- latency and averages ----------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
