"""Loaders, chunking, store and build of the indexer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fpdf import FPDF
from langchain_core.embeddings import Embeddings

from indexer import store
from indexer.build import build_index
from indexer.chunking import chunk_blocks
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.loaders import Block, load_document, parse_markdown, pdf_pages_to_blocks
from indexer.settings import Settings
from indexer.store import load_index
from indexer.text import numbers_in, split_sentences
from tests.conftest import DATA, make_settings


def write_pdf(path: Path, pages: list[list[str]], header: str = "", footer: bool = True) -> None:
    """A PDF whose lines are placed exactly, with a running header and page footer."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.set_auto_page_break(False)
    for number, lines in enumerate(pages, start=1):
        pdf.add_page()
        if header:
            pdf.cell(0, 8, header, new_x="LMARGIN", new_y="NEXT")
        for line in lines:
            pdf.cell(0, 7, line, new_x="LMARGIN", new_y="NEXT")
        if footer:
            pdf.set_y(-20)
            pdf.cell(0, 8, f"Page {number} of {len(pages)}")
    pdf.output(str(path))


# --- text -----------------------------------------------------------------------


def test_sentences_keep_decimals_and_abbreviations_whole() -> None:
    text = (
        "In ProDERM, 78.7% (37/47) responded vs. 43.8% (21/48) with placebo (p=0.0008). "
        "Lundberg et al. derived the criteria, e.g. from 976 patients. Anti-Jo-1 scores 3.9."
    )
    assert split_sentences(text) == [
        "In ProDERM, 78.7% (37/47) responded vs. 43.8% (21/48) with placebo (p=0.0008).",
        "Lundberg et al. derived the criteria, e.g. from 976 patients.",
        "Anti-Jo-1 scores 3.9.",
    ]


def test_numbers_ignore_names_with_digits() -> None:
    assert numbers_in("CD19 CAR-T; TIF1γ RR 4.66 in 1,962 patients") == {"4.66", "1962"}


# --- loaders ----------------------------------------------------------------------


def test_markdown_sections_and_byline() -> None:
    doc = parse_markdown(
        "# Title\n\n*Digest written by us.*\n\n## Background\n\nFirst para.\n\n"
        "### Detail\n\nSecond **bold** para.\n\n## Treatment\n\n- item one\n- item two\n"
    )
    assert doc.title == "Title"
    assert [(b.text, b.section) for b in doc.blocks] == [
        ("First para.", ("Background",)),
        ("Second bold para.", ("Background", "Detail")),
        ("item one", ("Treatment",)),
        ("item two", ("Treatment",)),
    ]


def test_pdf_pages_headers_footers_and_hyphenation(tmp_path: Path) -> None:
    path = tmp_path / "review.pdf"
    write_pdf(
        path,
        [
            ["1. Introduction", "Dermatomyositis is an inflammatory myopathy.", ""],
            ["2. Treatment", "Intravenous immuno-", "globulin was given at 2 g/kg every 4 weeks."],
            [
                "Glucocorticoids remain the first-line therapy.",
                "",
                "References",
                "1. Smith J. A paper.",
            ],
        ],
        header="Journal of Myositis Studies 2024",
    )
    doc = load_document(path)
    assert doc.pages == 3
    texts = [(b.page, b.section, b.text) for b in doc.blocks]
    assert (1, ("Introduction",), "Dermatomyositis is an inflammatory myopathy.") in texts
    assert (
        2,
        ("Treatment",),
        "Intravenous immunoglobulin was given at 2 g/kg every 4 weeks.",
    ) in texts
    assert (3, ("Treatment",), "Glucocorticoids remain the first-line therapy.") in texts
    joined = " ".join(b.text for b in doc.blocks)
    assert "Journal of Myositis" not in joined
    assert "Page" not in joined
    assert "Smith" not in joined  # references dropped


def test_pdf_blocks_keep_real_hyphens() -> None:
    blocks = pdf_pages_to_blocks(["Anti-MDA5 and anti-\nJo-1 antibodies matter."])
    assert blocks[0].text == "Anti-MDA5 and anti-Jo-1 antibodies matter."


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("corrupt.pdf", "unreadable PDF"),
        ("empty.pdf", "empty file"),
        ("encrypted.pdf", "encrypted PDF"),
        ("image_only.pdf", "no extractable text"),
        ("not_utf8.txt", "not UTF-8"),
    ],
)
def test_bad_files_raise_a_named_reason(name: str, reason: str) -> None:
    with pytest.raises(MyoQAError, match=reason):
        load_document(DATA / name)


# --- chunking -----------------------------------------------------------------------


def _words(text: str) -> int:
    return len(text.split())


def test_chunks_respect_sections_sentences_budget_and_overlap() -> None:
    sentences = [f"Sentence number {i} says something about myositis care." for i in range(30)]
    blocks = [Block(" ".join(sentences[:20]), ("A",)), Block(" ".join(sentences[20:]), ("B",))]
    chunks = chunk_blocks("src", blocks, _words, max_tokens=40, overlap_tokens=10)
    for chunk in chunks:
        assert _words(chunk.embedding_text()) <= 40
        assert all(chunk.text[a:b] in sentences for a, b in chunk.sentences)  # whole sentences
    assert {c.section for c in chunks} == {"A", "B"}
    assert not any("number 19" in c.text and "number 20" in c.text for c in chunks)
    a_chunks = [c for c in chunks if c.section == "A"]
    first_last = a_chunks[0].sentence_texts()[-1]
    assert a_chunks[1].sentence_texts()[0] == first_last  # one sentence of overlap
    covered = {s for c in chunks for s in c.sentence_texts()}
    assert covered == set(sentences)


def test_chunk_ids_are_stable_and_spans_point_into_the_document() -> None:
    blocks = [Block("Alpha is first. Beta is second.", ("S",)), Block("Gamma is third.", ("S",))]
    one = chunk_blocks("doc", blocks, _words, max_tokens=64, overlap_tokens=8)
    two = chunk_blocks("doc", blocks, _words, max_tokens=64, overlap_tokens=8)
    assert [c.chunk_id for c in one] == [c.chunk_id for c in two]
    document = "\n\n".join(b.text for b in blocks)
    assert document[one[0].char_start : one[0].char_start + 5] == "Alpha"
    assert document[one[-1].char_end - 6 : one[-1].char_end] == "third."


@pytest.mark.slow
def test_bundled_chunks_fit_the_real_tokenizer(
    bundled_index: Settings, real_model: EmbeddingModel
) -> None:
    index = load_index(bundled_index.paths.index_dir)
    limit = real_model.max_seq_length
    for chunk in index.chunks:
        pieces = real_model.count_tokens(chunk.embedding_text()) + 2  # [CLS] and [SEP]
        assert pieces <= limit, chunk.chunk_id
        assert pieces <= bundled_index.chunking.max_tokens + 2


# --- build and store --------------------------------------------------------------


class CountingModel(Embeddings):
    """Wraps a model's embeddings and records every text the build sends."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.inner = model.embeddings
        self.texts: list[str] = []
        model.embeddings = self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def test_round_trip_and_citable_metadata(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    report = build_index(tiny_settings, fake_model, progress=False)
    assert (report.sources, report.skipped) == (3, [])
    index = load_index(tiny_settings.paths.index_dir, tiny_settings.index_identity(32))
    assert index.vectors.ntotal == len(index.chunks) == report.chunks
    results = {c.source_id for c in index.chunks}
    assert results == {"ivig", "ibm", "mda5"}
    record = index.source("ibm")
    assert (record.doi, record.pmid) == ("10.3389/fneur.2022.1020113", "36237625")
    ivig = [c for c in index.chunks if c.source_id == "ivig"]
    assert {c.section for c in ivig} == {"Trial design", "Results"}
    # vectors are normalised and come back as stored
    norms = np.linalg.norm(index.all_vectors(), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    assert not list(tiny_settings.paths.index_dir.glob("*.pkl"))


def test_mismatched_index_is_refused_with_rebuild_hint(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    build_index(tiny_settings, fake_model, progress=False)
    other = tiny_settings.model_copy(
        update={"chunking": tiny_settings.chunking.model_copy(update={"max_tokens": 100})}
    )
    with pytest.raises(MyoQAError, match=r"max_tokens.*myositis-qa index --rebuild"):
        load_index(other.paths.index_dir, other.index_identity(32))
    with pytest.raises(MyoQAError, match="embedding_model"):
        load_index(
            tiny_settings.paths.index_dir,
            {**tiny_settings.index_identity(32), "embedding_model": "x"},
        )


def test_missing_index_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(MyoQAError, match="myositis-qa index"):
        load_index(tmp_path / "nowhere")


def test_incremental_build_reembeds_only_the_changed_source(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    counter = CountingModel(fake_model)
    first = build_index(tiny_settings, fake_model, progress=False)
    assert first.embedded == first.chunks
    counter.texts.clear()

    unchanged = build_index(tiny_settings, fake_model, progress=False)
    assert (unchanged.embedded, counter.texts) == (0, [])

    ibm = tiny_settings.paths.corpus_dir / "ibm.md"
    ibm.write_text(ibm.read_text() + "\nCK is only moderately raised in IBM.\n", encoding="utf-8")
    (tiny_settings.paths.corpus_dir / "mda5.md").unlink()
    manifest = tiny_settings.paths.manifest
    manifest.write_text(
        "\n".join(ln for ln in manifest.read_text().splitlines() if not ln.startswith("mda5"))
        + "\n"
    )
    changed = build_index(tiny_settings, fake_model, progress=False)
    assert counter.texts, "the changed source was not re-embedded"
    assert all(
        "IBM" in t or "inclusion body" in t.lower() or "moderately" in t for t in counter.texts
    )
    assert changed.reused > 0 and changed.sources == 2
    index = load_index(tiny_settings.paths.index_dir)
    assert {c.source_id for c in index.chunks} == {"ivig", "ibm"}
    assert any("moderately raised" in c.text for c in index.chunks)

    counter.texts.clear()
    rebuilt = build_index(tiny_settings, fake_model, rebuild=True, progress=False)
    assert rebuilt.embedded == rebuilt.chunks and rebuilt.reused == 0


def test_bad_files_are_reported_and_the_rest_indexes(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    corpus = tiny_settings.paths.corpus_dir
    rows = []
    for name in ("corrupt.pdf", "empty.pdf", "encrypted.pdf", "image_only.pdf"):
        shutil.copy(DATA / name, corpus / name)
        rows.append(f"{name.split('.')[0]},{name},Bad {name},,,,,")
    rows.append("ghost,ghost.md,A missing file,,,,,")
    (corpus / "unlisted.md").write_text("# Unlisted\n\nSome text.\n")
    with tiny_settings.paths.manifest.open("a") as handle:
        handle.write("\n".join(rows) + "\n")

    report = build_index(tiny_settings, fake_model, progress=False)
    reasons = {p.name: p.reason for p in report.skipped}
    assert report.sources == 3
    assert "unreadable PDF" in reasons["corrupt.pdf"]
    assert reasons["empty.pdf"] == "empty file"
    assert "encrypted" in reasons["encrypted.pdf"]
    assert "no extractable text" in reasons["image_only.pdf"]
    assert "does not exist" in reasons["ghost"]
    assert "no row" in reasons["unlisted.md"]
    assert load_index(tiny_settings.paths.index_dir).manifest.skipped == reasons

    with pytest.raises(MyoQAError, match="--strict: 6 file"):
        build_index(tiny_settings, fake_model, strict=True, progress=False)


def test_nothing_indexable_fails_and_keeps_the_old_index(
    tiny_settings: Settings, fake_model: EmbeddingModel, tmp_path: Path
) -> None:
    build_index(tiny_settings, fake_model, progress=False)
    before = load_index(tiny_settings.paths.index_dir).manifest.built_at
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.csv").write_text("id,file,title\nx,x.pdf,Broken\n")
    shutil.copy(DATA / "corrupt.pdf", empty / "x.pdf")
    settings = make_settings(empty, tiny_settings.paths.index_dir, embedding={"model": "fake-32"})
    with pytest.raises(MyoQAError, match=r"Nothing could be indexed: x\.pdf: unreadable PDF"):
        build_index(settings, fake_model, progress=False)
    assert load_index(tiny_settings.paths.index_dir).manifest.built_at == before


def test_interrupted_build_leaves_the_old_index_loadable(
    tiny_settings: Settings, fake_model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_index(tiny_settings, fake_model, progress=False)
    old = load_index(tiny_settings.paths.index_dir)
    (tiny_settings.paths.corpus_dir / "ibm.md").write_text(
        "# IBM\n\n## New\n\nCompletely new text.\n"
    )

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C while the new files are written

    monkeypatch.setattr(store, "_flat_index", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_settings, fake_model, progress=False)
    again = load_index(tiny_settings.paths.index_dir)
    assert [c.chunk_id for c in again.chunks] == [c.chunk_id for c in old.chunks]
    leftovers = [
        p.name
        for p in tiny_settings.paths.index_dir.parent.iterdir()
        if p.name.startswith(".index")
    ]
    assert leftovers == []


@pytest.mark.slow
def test_real_model_embeds_and_retrieves(
    tiny_corpus: Path, tmp_path: Path, real_model: EmbeddingModel
) -> None:
    settings = make_settings(tiny_corpus, tmp_path / "real-index")
    build_index(settings, real_model, progress=False)
    index = load_index(settings.paths.index_dir, settings.index_identity(real_model.dim))
    assert index.manifest.identity["embedding_dim"] == 384
    query = real_model.embed_query("Which antibody goes with rapidly progressive lung disease?")
    _, rows = index.vectors.search(query[None, :], 1)
    assert index.chunks[int(rows[0][0])].source_id == "mda5"


JATS = """<?xml version="1.0" encoding="UTF-8"?>
<article><front><article-meta><title-group><article-title>Exercise in <italic>myositis</italic></article-title></title-group>
<abstract><p>Exercise is safe in myositis.</p></abstract></article-meta></front>
<body><sec><title>Background</title><p>Patients were once told to rest.</p>
<sec><title>Trials</title><p>Training improved <bold>strength</bold> in 3 trials.</p></sec></sec>
<fig><caption><p>A figure caption.</p></caption></fig></body>
<back><ref-list><ref><p>Smith J. A paper.</p></ref></ref-list></back></article>
"""


def test_jats_xml_sections_and_no_references(tmp_path: Path) -> None:
    path = tmp_path / "article.xml"
    path.write_text(JATS, encoding="utf-8")
    doc = load_document(path)
    assert doc.title == "Exercise in myositis"
    assert [(b.section, b.text) for b in doc.blocks] == [
        (("Abstract",), "Exercise is safe in myositis."),
        (("Background",), "Patients were once told to rest."),
        (("Background", "Trials"), "Training improved strength in 3 trials."),
    ]


def test_jats_entity_expansion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xml"
    path.write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;">]>'
        "<article><body><p>&y;</p></body></article>",
        encoding="utf-8",
    )
    with pytest.raises(MyoQAError, match="unreadable XML"):
        load_document(path)


def test_up_to_date_check_needs_no_model(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    from indexer.build import is_up_to_date

    assert not is_up_to_date(tiny_settings)  # nothing built yet
    build_index(tiny_settings, fake_model, progress=False)
    assert is_up_to_date(tiny_settings)
    other = tiny_settings.model_copy(
        update={"chunking": tiny_settings.chunking.model_copy(update={"overlap_tokens": 10})}
    )
    assert not is_up_to_date(other)
    manifest = tiny_settings.paths.manifest
    manifest.write_text(
        manifest.read_text().replace("Inclusion body myositis review", "IBM review")
    )
    assert not is_up_to_date(tiny_settings)  # a manifest edit changes what citations show
    build_index(tiny_settings, fake_model, progress=False)
    (tiny_settings.paths.corpus_dir / "ibm.md").write_text("# IBM\n\n## New\n\nNew text here.\n")
    assert not is_up_to_date(tiny_settings)
