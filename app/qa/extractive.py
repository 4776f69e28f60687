"""The default answerer: quotes the best-supported sentences of the evidence.

It scores every sentence of the retrieved passages against the question
(embedding similarity plus weighted coverage of the question's key terms),
picks the best with a diversity penalty (MMR) and cites each. It cannot state a
fact that is not in a cited passage because it only copies sentences.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.qa.lexical import SynonymTable, negations, stem, tokenize, words
from app.qa.retrieval import Hit, Query
from indexer.chunking import SECTION_SEPARATOR
from indexer.settings import AnswerSettings
from indexer.text import numbers_in

_DANGLING = re.compile(
    r"^(?:this|these|that|those|it|its|they|their|such|both|he|she|the latter|the former)\b",
    re.IGNORECASE,
)
# weights of the sentence score; documented in the README's architecture section
SEMANTIC_WEIGHT = 0.5
LEXICAL_WEIGHT = 0.4
#: rewards sentences that add information beyond the question's own words
INFORMATION_WEIGHT = 0.1
#: distinct new content tokens at which a sentence counts as fully informative
INFORMATIVE_TOKENS = 10
#: a pair of sentences must beat a single one by this factor to be preferred
PAIR_FACTOR = 0.95
#: ... and its second sentence must add at least this much key-term coverage
PAIR_MIN_GAIN = 0.1
#: cosine above which two sentences say the same thing
DUPLICATE_SIMILARITY = 0.88
#: share of tokens two sentences have in common above which they say the same thing
DUPLICATE_OVERLAP = 0.6
#: ... or above which they do when one's figures are all in the other
RESTATED_SIMILARITY = 0.6
#: a unit that names what the question negates, without the negation, scores this much less
NEGATION_MISMATCH = 0.85
#: how far below the best sentence another may score and still be included
RELATIVE_CUTOFF = 0.8


@dataclass
class Candidate:
    """A quotable unit: one sentence, or two neighbouring sentences of one passage."""

    hit_position: int
    text: str
    vector: np.ndarray
    semantic: float
    lexical: float
    score: float = 0.0
    #: the sentences the unit is made of, and their vectors
    parts: tuple[str, ...] = ()
    part_vectors: np.ndarray | None = None


@dataclass(frozen=True)
class Term:
    """A key term of the question: the tokens that count as mentioning it, and its weight."""

    alternatives: frozenset[str]
    weight: float
    #: the question's spelling of a name, acronym or number the index never uses, else ""
    unknown: str = ""


#: weight of a question word the literature never uses but that is ordinary English
COMMON_UNKNOWN_WEIGHT = 1.0


def question_terms(
    question: str,
    synonyms: SynonymTable,
    idf: Mapping[str, float],
    is_common_word: Callable[[str], bool],
) -> list[Term]:
    """The question's key terms with IDF weights.

    A term the index never uses weighs as much as the rarest indexed term when it
    looks specific (a name, an acronym, a number, a word the tokenizer does not
    know whole) — a question about "Japan" or "HLA alleles" is not answered by a
    passage that merely shares its other words — and little when it is ordinary
    English ("roughly", "fraction").
    """
    rarest = max(idf.values(), default=1.0)
    spelled = re.findall(r"\w+", question)
    original = {stem(t.casefold()): t for t in spelled}
    first_word = spelled[0] if spelled else ""
    terms: list[Term] = []
    seen: set[str] = set()
    for word in words(question):
        all_forms = tokenize(word)
        whole = set(all_forms[:2])  # the word itself and its hyphen-free spelling
        # an unknown compound (male-to-female) is matched by its parts instead
        unknown_compound = len(all_forms) > 1 and not whole & idf.keys()
        forms = all_forms[2:] if unknown_compound else all_forms[:1]
        for token in forms:
            if token in seen:
                continue
            seen.add(token)
            alternatives = {token, *whole} if token == all_forms[0] else {token}
            curated = False
            for group in synonyms.token_groups:
                if token in group:
                    alternatives |= group
                    curated = True
            known = [idf[t] for t in alternatives if t in idf]
            if not known and curated:
                # a curated abbreviation (SLR) whose spelled-out form the tokens cannot match
                terms.append(Term(frozenset(alternatives), COMMON_UNKNOWN_WEIGHT))
                continue
            if known:
                # the question's own word decides how telling it is; synonyms only match
                weight = max(idf.get(token, max(known)), 0.5)
            else:
                raw = original.get(token, token)
                # a name, acronym or number the literature never uses
                distinctive = (raw[:1].isupper() and (raw != first_word or raw.isupper())) or any(
                    ch.isdigit() for ch in token
                )
                specific = distinctive or not is_common_word(raw.casefold())
                weight = rarest if specific else COMMON_UNKNOWN_WEIGHT
                terms.append(
                    Term(frozenset(alternatives), weight, unknown=raw if distinctive else "")
                )
                continue
            terms.append(Term(frozenset(alternatives), weight))
    for negated in negations(question):
        if negated not in seen:
            seen.add(negated)
            terms.append(Term(frozenset({negated}), max(idf.get(negated, rarest), 0.5)))
    return terms


def lexical_coverage(sentence_tokens: set[str], terms: Sequence[Term]) -> float:
    """Weighted share of the question's terms that the tokens mention (0..1)."""
    total = sum(t.weight for t in terms)
    if not total:
        return 0.0
    return sum(t.weight for t in terms if t.alternatives & sentence_tokens) / total


def candidates_from(
    query: Query,
    hits: Sequence[Hit],
    sentence_vectors: Sequence[np.ndarray],
    terms: Sequence[Term],
) -> list[Candidate]:
    """Score every quotable unit of every hit.

    Units are single sentences and pairs of neighbouring sentences (a topic
    sentence and the one that completes it, kept only when the second adds
    asked-for terms). A sentence that starts with a dangling "This"/"They" never
    starts a unit; it can only follow the sentence it leans on.
    """
    assert query.vector is not None
    asked = set().union(*(t.alternatives for t in terms)) if terms else set()
    negated = [
        (token.removeprefix("no-"), token)
        for t in terms
        for token in t.alternatives
        if token.startswith("no-")
    ]
    out: list[Candidate] = []
    for position, (hit, vectors) in enumerate(zip(hits, sentence_vectors, strict=True)):
        texts = hit.chunk.sentence_texts()
        prior = 1.0 / (1.0 + 0.05 * position)
        # the innermost heading is context every sentence below it shares
        heading = set(tokenize(hit.chunk.section.split(SECTION_SEPARATOR)[-1]))
        for start in range(len(texts)):
            single_lexical = 1.0
            for length in (1, 2):
                stop = start + length
                if stop > len(texts) or _DANGLING.match(texts[start]):
                    continue
                text = " ".join(texts[start:stop])
                vector = vectors[start:stop].sum(axis=0)
                vector = vector / (np.linalg.norm(vector) or 1.0)
                semantic = float(np.dot(query.vector, vector))
                tokens = set(tokenize(text))
                lexical = lexical_coverage(tokens | heading, terms)
                information = min(1.0, len(tokens - asked) / INFORMATIVE_TOKENS)
                score = (
                    (
                        SEMANTIC_WEIGHT * semantic
                        + LEXICAL_WEIGHT * lexical
                        + INFORMATION_WEIGHT * information
                    )
                    * prior
                    * (1.0 if length == 1 else PAIR_FACTOR)
                )
                if any(t in tokens and n not in tokens for t, n in negated):
                    score *= NEGATION_MISMATCH  # "with biopsy" answers "without a biopsy" badly
                parts = tuple(texts[start:stop])
                if length == 2 and lexical <= single_lexical + PAIR_MIN_GAIN:
                    continue  # the second sentence adds none of the asked-for terms
                if length == 1:
                    single_lexical = lexical
                out.append(
                    Candidate(
                        position, text, vector, semantic, lexical, score, parts, vectors[start:stop]
                    )
                )
    return out


def select_mmr(
    candidates: Sequence[Candidate], max_sentences: int, min_sentences: int, mmr_lambda: float
) -> list[Candidate]:
    """Pick relevant, non-redundant sentences (maximal marginal relevance)."""
    pool = sorted(candidates, key=lambda c: -c.score)
    if not pool:
        return []
    best = pool[0].score
    chosen: list[Candidate] = []
    used = 0  # sentences so far
    while pool and used < max_sentences:

        def marginal(c: Candidate) -> float:
            redundancy = max((float(np.dot(c.vector, s.vector)) for s in chosen), default=0.0)
            return mmr_lambda * c.score - (1 - mmr_lambda) * redundancy

        pick = max(pool, key=marginal)
        pool.remove(pick)
        if used + len(pick.parts) > max_sentences:
            continue
        if any(set(pick.parts) & set(c.parts) for c in chosen):
            continue
        if any(_restates(pick, c) for c in chosen):
            continue
        floor = RELATIVE_CUTOFF if used >= min_sentences else RELATIVE_CUTOFF - 0.15
        if pick.score < best * floor:
            break
        chosen.append(pick)
        used += len(pick.parts)
    return chosen


def _restates(one: Candidate, other: Candidate) -> bool:
    """A near-duplicate: chunk overlap, or another digest restating the same figures."""
    assert one.part_vectors is not None and other.part_vectors is not None
    similarity = float(np.max(one.part_vectors @ other.part_vectors.T))
    if similarity > DUPLICATE_SIMILARITY:
        return True
    for mine in one.parts:
        for theirs in other.parts:
            a, b = set(tokenize(mine)), set(tokenize(theirs))
            if a and b and len(a & b) / len(a | b) >= DUPLICATE_OVERLAP:
                return True
    figures = numbers_in(one.text)
    adds_nothing = bool(figures) and figures <= numbers_in(other.text)
    return adds_nothing and float(np.dot(one.vector, other.vector)) > RESTATED_SIMILARITY


def bm25_idf(idf: Mapping[str, float]) -> dict[str, float]:
    """Non-negative IDF weights (rank-bm25 may give common terms negative IDF)."""
    return {t: max(v, 0.0) for t, v in idf.items() if not math.isnan(v)}


class ExtractiveAnswerer:
    """Chooses sentences; the chain turns them into a cited answer."""

    name = "extractive"

    def __init__(
        self,
        settings: AnswerSettings,
        synonyms: SynonymTable,
        idf: Mapping[str, float],
        is_common_word: Callable[[str], bool],
    ):
        self.settings = settings
        self.synonyms = synonyms
        self.idf = bm25_idf(idf)
        self.is_common_word = is_common_word

    def terms(self, question: str) -> list[Term]:
        return question_terms(question, self.synonyms, self.idf, self.is_common_word)

    def select(
        self,
        query: Query,
        terms: Sequence[Term],
        hits: Sequence[Hit],
        sentence_vectors: Sequence[np.ndarray],
    ) -> list[Candidate]:
        candidates = candidates_from(query, hits, sentence_vectors, terms)
        return select_mmr(
            candidates,
            self.settings.max_sentences,
            self.settings.min_sentences,
            self.settings.mmr_lambda,
        )


_ASKS_FOR_RESULTS = re.compile(
    r"\b(?:results?|show(?:ed|n)?|find(?:ings?)?|found|outcomes?|efficacy|effect|work(?:ed)?)\b",
    re.IGNORECASE,
)
_NOT_YET = re.compile(
    r"\b(?:under ?way|ongoing|in progress|awaited|not yet (?:been )?(?:reported|published|known))\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Support:
    """Whether the chosen evidence answers the question, and if not, why."""

    supported: bool
    why: str = ""
    #: weighted share of the question's key terms the top two sentences mention
    coverage: float = 0.0
    #: the unknown terms of the question, shown to the user
    unknown_terms: tuple[str, ...] = ()
    #: a sentence saying the asked-for result is not available yet (cited instead of an answer)
    not_reported: Candidate | None = None


def assess_support(
    question: str,
    terms: Sequence[Term],
    picked: Sequence[Candidate],
    abstain_threshold: float,
    min_coverage: float,
) -> Support:
    """Decide whether to answer: a pure function of the question and the chosen sentences.

    Abstains when the best sentence scores below ``abstain_threshold``; when the top
    two sentences mention less than ``min_coverage`` of the question's weighted key
    terms; when the question names something specific the index never mentions;
    when the question states a number the chosen sentences do not contain (a
    "10-year survival" answered with other figures); and, for questions about
    results, when the best sentence says the study is still under way.
    """
    if not picked:
        return Support(False, "no passage matched the question")
    covered: set[str] = set()
    for candidate in picked[:2]:
        covered.update(tokenize(candidate.text))
    coverage = lexical_coverage(covered, terms)
    if picked[0].score < abstain_threshold:
        why = f"best sentence score {picked[0].score:.3f} < {abstain_threshold}"
        return Support(False, why, coverage)
    if coverage < min_coverage:
        return Support(False, f"key-term coverage {coverage:.3f} < {min_coverage}", coverage)
    unknown = tuple(dict.fromkeys(t.unknown for t in terms if t.unknown))
    if unknown:
        why = "the index never mentions " + ", ".join(unknown)
        return Support(False, why, coverage, unknown_terms=unknown)
    evidence_numbers: set[str] = set()
    for candidate in picked:
        evidence_numbers |= {_plain_number(n) for n in numbers_in(candidate.text)}
    asked_numbers = {_plain_number(n) for n in numbers_in(question) if not _YEAR.fullmatch(n)}
    missing = asked_numbers - evidence_numbers
    if missing:
        return Support(False, f"the evidence does not state {', '.join(sorted(missing))}", coverage)
    if _ASKS_FOR_RESULTS.search(question) and _NOT_YET.search(picked[0].text):
        why = "the sources say this is still under way"
        return Support(False, why, coverage, not_reported=picked[0])
    return Support(True, coverage=coverage)


#: a year names a publication or guideline ("BSR 2022"), not a quantity the answer must state
_YEAR = re.compile(r"(?:19|20)\d\d")


def _plain_number(number: str) -> str:
    """2.0 and 2 are the same number."""
    return number.rstrip("0").rstrip(".") if "." in number else number
