"""Which paper reports a quoted sentence: the per-sentence keys of the bundled digests.

A digest passage quotes many papers; each of its sentences carries the bibliography
keys of its sources (``[@RIM13]`` in the Markdown, kept by the loader). A citation
names the primary (first) key of the sentences it quotes, so two sentences of one
passage that report different papers become two citations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from indexer.chunking import Chunk

_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def quoted_keys(chunk: Chunk, text: str) -> list[str]:
    """Keys of the chunk sentences that ``text`` quotes (first-seen order).

    An extractive answer copies whole sentences, so containment finds them; a
    paraphrase (LLM answer) takes the keys of the chunk sentence sharing most of
    its words, when that sentence shares at least half of them.
    """
    keys = chunk.sources_of(text)
    if keys or not any(chunk.sentence_sources):
        return keys
    said = _words(text)
    if not said:
        return []
    best, best_share = -1, 0.0
    for i, (a, b) in enumerate(chunk.sentences):
        share = len(said & _words(chunk.text[a:b])) / len(said)
        if share > best_share:
            best, best_share = i, share
    return list(chunk.sentence_sources[best]) if best >= 0 and best_share >= 0.5 else []


def citation_units(
    cites_per_sentence: Sequence[tuple[str, Sequence[int]]],
    chunk_of: Callable[[int], Chunk],
    resolves: Callable[[str], bool],
) -> tuple[list[tuple[int, ...]], list[tuple[int, str, tuple[str, ...]]]]:
    """Split cited passages by the primary reference of the sentences quoting them.

    Args:
        cites_per_sentence: each answer sentence's text and the passages it cites.
        chunk_of: the chunk of a passage key.
        resolves: whether a bibliography key is known.

    Returns:
        For each sentence, the units it cites; and the units, each
        ``(passage key, primary reference key or "", all keys of the quoted sentences)``.
    """
    units: list[tuple[int, str, tuple[str, ...]]] = []
    where: dict[tuple[int, str], int] = {}
    per_sentence: list[tuple[int, ...]] = []
    for text, cites in cites_per_sentence:
        mine: list[int] = []
        for key in cites:
            found = [k for k in quoted_keys(chunk_of(key), text) if resolves(k)]
            primary = found[0] if found else ""
            slot = where.get((key, primary))
            if slot is None:
                slot = where[(key, primary)] = len(units)
                units.append((key, primary, tuple(found)))
            else:
                passage, ref, known = units[slot]
                units[slot] = (passage, ref, tuple(dict.fromkeys([*known, *found])))
            if slot not in mine:
                mine.append(slot)
        per_sentence.append(tuple(mine))
    return per_sentence, units
