"""Lexical matching: a tokenizer that keeps the domain's tokens whole, and query expansion."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import snowballstemmer

_GREEK = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "κ": "kappa", "μ": "mu",
}  # fmt: skip
_SPELLED_GREEK = re.compile(r"(?:(?<=\d)[- ]?|(?<=[a-z])-?)(alpha|beta|gamma|delta|kappa)\b")
# a token: letters/digits joined by - / . (anti-MDA5, Jo-1, g/kg, 78.7), optionally led by ≥ ≤ < >
_TOKEN = re.compile(r"[≥≤<>]?[a-z0-9]+(?:[-/.][a-z0-9]+)*")
_UNITS = frozenset({"g/kg", "mg/kg", "mg", "g", "kg", "mg/m2", "mg/dl", "u/l", "ml", "%"})

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "without",
        "say",
        "says",
        "said",
        "often",
        "long",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "do",
        "does",
        "did",
        "done",
        "have",
        "has",
        "had",
        "having",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "they",
        "them",
        "their",
        "there",
        "here",
        "than",
        "then",
        "so",
        "such",
        "can",
        "could",
        "should",
        "would",
        "will",
        "may",
        "might",
        "must",
        "shall",
        "i",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "he",
        "she",
        "his",
        "her",
        "not",
        "no",
        "nor",
        "any",
        "all",
        "some",
        "more",
        "most",
        "less",
        "few",
        "many",
        "much",
        "very",
        "into",
        "over",
        "under",
        "between",
        "during",
        "after",
        "before",
        "also",
        "just",
        "only",
        "same",
        "other",
        "another",
        "each",
        "both",
        "either",
        "neither",
        "up",
        "down",
        "out",
        "off",
        "again",
        "further",
        "once",
        "tell",
        "explain",
        "describe",
        "give",
        "list",
        "known",
        "usually",
        "typically",
        "generally",
        "main",
        "key",
        "role",
        "versus",
        "vs",
        "like",
        "used",
        "use",
        "using",
        "does",
        "get",
        "got",
        "whats",
        "what's",
    ]
)


def normalise(text: str) -> str:
    """Case-fold, unify Unicode forms and spell Greek letters out (TIF1γ -> tif1gamma)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("²", "2").replace("–", "-").replace("—", " ").replace("−", "-")
    for letter, name in _GREEK.items():
        text = text.replace(letter, name)
    return _SPELLED_GREEK.sub(r"\1", text)


_STEMMER = snowballstemmer.stemmer("english")


#: words whose stems would merge terms the criteria keep apart (probable IIM vs probability)
_UNSTEMMED = frozenset(
    {"probable", "probability", "possible", "possibility", "definite", "definition", "definitions"}
)


@lru_cache(maxsize=65536)
def stem(token: str) -> str:
    """Snowball stem of a purely alphabetic token (prevalence, prevalent -> preval); others as is."""
    if not token.isalpha() or token in _UNSTEMMED:
        return token
    return _STEMMER.stemWord(token)


def tokenize(text: str) -> list[str]:
    """BM25 tokens: whole domain tokens plus their parts.

    ``anti-MDA5`` gives ``anti-mda5`` (whole), ``antimda5`` (hyphen-free form, so
    ``TIF1γ``, ``TIF1-gamma`` and ``TIF-1γ`` all meet at ``tif1gamma``) and the
    parts ``anti``, ``mda5``; ``≥5.5`` gives ``≥5.5`` and ``5.5``; a number
    followed by a unit also gives the joined form (``2 g/kg`` -> ``2g/kg``).
    Stopwords are dropped; purely alphabetic tokens are stemmed.
    """
    out = negations(text)
    for token in _raw_tokens(text):
        out.append(stem(token))
        greek = _GREEK_SUFFIX.match(token)
        if greek:
            out.append(greek.group(1))  # tif1gamma also matches a bare "TIF1"
    return out


_NEGATED = re.compile(r"\b(?:without|no|not)\s+(?:(?:a|an|the|any|muscle)\s+)*([a-z][a-z-]+)")
_FRACTION = re.compile(r"\d+(?:\.\d+)?/\d+(?:\.\d+)?")
_GREEK_SUFFIX = re.compile(r"^([a-z]+\d+)(?:alpha|beta|gamma|delta|kappa)$")


def _raw_tokens(text: str) -> list[str]:
    tokens: list[str] = []
    raw: list[str] = []
    for token in _TOKEN.findall(normalise(text)):
        # PL-7/PL-12 is two names; g/kg and 37/47 stay whole
        if "/" in token and token not in _UNITS and not _FRACTION.fullmatch(token.lstrip("≥≤<>")):
            parts = [p for p in token.split("/") if p]
            if all(re.search(r"[a-z]", p) and re.search(r"\d", p) for p in parts):
                raw.extend(parts)
                continue
        raw.append(token)
    for position, token in enumerate(raw):
        if token in STOPWORDS or (len(token) == 1 and token.isalpha()):
            continue
        tokens.append(token)
        bare = token.lstrip("≥≤<>")
        if bare != token:
            tokens.append(bare)
        ordinal = re.fullmatch(r"(\d+)(?:st|nd|rd|th)", bare)
        if ordinal:
            tokens.append(ordinal.group(1))  # 272nd -> 272
        if re.fullmatch(r"\d+\.0+", bare):
            tokens.append(bare.split(".")[0])  # 2.0 -> 2
        if "-" in bare:
            joined = bare.replace("-", "")
            tokens.append(joined)
            tokens.extend(p for p in bare.split("-") if len(p) > 1 and p not in STOPWORDS)
            if bare.startswith("anti-") and "-" in bare[5:]:
                tokens.append(bare[5:])  # anti-jo-1 -> jo-1
        if "/" in bare and bare not in _UNITS:
            tokens.extend(p for p in bare.split("/") if len(p) > 1 and p not in STOPWORDS)
        if (
            re.fullmatch(r"\d+(?:\.\d+)?", bare)
            and position + 1 < len(raw)
            and raw[position + 1] in _UNITS
        ):
            tokens.append(bare + raw[position + 1])
    return tokens


def negations(text: str) -> list[str]:
    """Tokens for negated terms: "no muscle biopsy" and "without a biopsy" give ``no-biopsi``.

    They keep "probable IIM without a biopsy" apart from the with-biopsy cut-offs.
    """
    return ["no-" + stem(word) for word in _NEGATED.findall(normalise(text))]


def words(text: str) -> list[str]:
    """The non-stopword word tokens of a text, normalised but not split or stemmed."""
    return [t for t in _TOKEN.findall(normalise(text)) if t not in STOPWORDS]


def content_terms(text: str) -> list[str]:
    """The distinct whole tokens of a text (no parts), in order; for coverage checks."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(normalise(text)):
        if token not in STOPWORDS and len(token) > 1:
            seen.setdefault(token.lstrip("≥≤<>").replace("-", ""), None)
    return list(seen)


@dataclass(frozen=True)
class SynonymTable:
    groups: tuple[tuple[str, ...], ...]

    @property
    def token_groups(self) -> tuple[frozenset[str], ...]:
        """Each group as the set of single-token forms of its terms (for term matching)."""
        return _token_groups(self.groups)

    def expansions(self, text: str) -> list[str]:
        """Terms equivalent to those found in ``text`` that ``text`` does not already contain."""
        padded = f" {' '.join(_TOKEN.findall(normalise(text)))} "
        extra: list[str] = []
        for group in self.groups:
            if any(f" {term} " in padded for term in group):
                extra.extend(t for t in group if f" {t} " not in padded and t not in extra)
        return extra


@cache
def _token_groups(groups: tuple[tuple[str, ...], ...]) -> tuple[frozenset[str], ...]:
    out = []
    for group in groups:
        forms = [tokenize(term) for term in group if " " not in term]
        out.append(frozenset(t[0] for t in forms if t))
    return tuple(out)


@cache
def default_synonyms() -> SynonymTable:
    """The bundled abbreviation/synonym table (``app/data/synonyms.json``)."""
    data = json.loads(resources.files("app.qa").joinpath("data/synonyms.json").read_text("utf-8"))
    groups = tuple(tuple(normalise(t) for t in group) for group in data["groups"])
    return SynonymTable(groups)
