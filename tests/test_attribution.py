"""Every citation names the paper that reports the quoted sentence (issue 12, items 1-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fpdf import FPDF

from app.cli.ask import format_answer
from app.qa.chain import QAChain
from app.qa.retrieval import Hit
from app.qa.schema import Answer, Citation
from app.qa.verify import DraftSentence
from app.web.ui import render_citation
from indexer.bibliography import read_bibliography, strip_markers
from indexer.build import build_index, is_up_to_date
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.loaders import load_document
from indexer.settings import Settings
from indexer.sources import plan_sources
from indexer.store import load_index
from indexer.text import numbers_in, sentence_spans
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
FACTS = json.loads((Path(__file__).parent / "data" / "fact_sources.json").read_text("utf-8"))


def digest_sentences() -> list[tuple[str, str, tuple[str, ...]]]:
    """(file, sentence, keys) for every sentence the loader keeps from the digests."""
    out = []
    for path in sorted((CORPUS / "reviews").glob("*.md")):
        for block in load_document(path).blocks:
            for a, b in sentence_spans(block.text):
                keys: list[str] = []
                for offset, found in block.citations:
                    if a <= offset <= b:
                        keys.extend(found)
                out.append((path.name, block.text[a:b], tuple(keys)))
    return out


def bibliography_keys() -> set[str]:
    return {ref.key for ref in read_bibliography(CORPUS / "bibliography.json")}


def test_markers_leave_the_quotable_text_as_written() -> None:
    clean, found = strip_markers("RIM enrolled 200 patients [@RIM13]. Both [@BEST19; @OLDROYD21].")
    assert clean == "RIM enrolled 200 patients. Both."
    assert found == [(25, ("RIM13",)), (31, ("BEST19", "OLDROYD21"))]
    for _, sentence, _ in digest_sentences():
        assert "[@" not in sentence and "@" not in sentence, sentence


def test_every_sentence_with_a_number_carries_a_key() -> None:
    missing = [
        f"{name}: {sentence}"
        for name, sentence, keys in digest_sentences()
        if numbers_in(sentence) and not keys
    ]
    assert not missing, "\n".join(missing[:10])


def test_every_key_resolves_to_a_bibliography_record() -> None:
    known = bibliography_keys()
    used = {k for _, _, keys in digest_sentences() for k in keys}
    assert used and used <= known, sorted(used - known)
    for ref in read_bibliography(CORPUS / "bibliography.json"):
        assert ref.title, ref.key
        if ref.doi:
            assert ref.doi.startswith("10.") and ref.url == f"https://doi.org/{ref.doi}", ref.key
        if ref.pmid:
            assert ref.pmid.isdigit(), ref.key
        if ref.pmcid:
            assert ref.pmcid.startswith("PMC"), ref.key


def test_each_fact_is_stated_by_a_sentence_carrying_its_own_source() -> None:
    sentences = digest_sentences()
    assert len(FACTS["facts"]) == 120
    known = bibliography_keys()
    failures = []
    for fact in FACTS["facts"]:
        assert set(fact["keys"]) <= known, fact["fact"]
        stating = [
            (name, s, keys)
            for name, s, keys in sentences
            if all(i.lower() in s.lower() for i in fact["identifiers"])
        ]
        if not stating:
            failures.append(f"fact {fact['fact']}: no sentence contains {fact['identifiers']}")
        elif not any(set(keys) & set(fact["keys"]) for _, _, keys in stating):
            failures.append(
                f"fact {fact['fact']}: sentences stating it cite {[k for *_, k in stating]}, "
                f"not {fact['keys']}"
            )
    assert not failures, "\n".join(failures)


def test_manifest_rows_describe_the_digests_not_one_paper() -> None:
    plan = plan_sources(CORPUS, CORPUS / "manifest.csv")
    for record, path in plan.sources:
        assert record.authors == "myositis-qa team" and not record.doi and not record.pmid
        assert record.title == load_document(path).title


DIGEST = """# Biologics for refractory myositis

## Trials

The RIM trial enrolled 200 refractory patients [@RIM13]. Tofacitinib led all 10 STIR patients to improve [@STIR21]. Abatacept blocks T-cell co-stimulation.
"""
BIB = [
    {"id": "RIM13", "type": "article-journal", "title": "Rituximab in refractory myositis",
     "author": [{"family": "Oddis", "given": "CV"}], "container-title": "Arthritis Rheum",
     "issued": {"date-parts": [[2013]]}, "volume": "65", "issue": "2", "page": "314-324",
     "DOI": "10.1002/art.37754", "PMID": "23124935"},
    {"id": "STIR21", "type": "article-journal", "title": "Study of tofacitinib in refractory dermatomyositis",
     "author": [{"family": "Paik", "given": "JJ"}], "container-title": "Arthritis Rheumatol",
     "issued": {"date-parts": [[2021]]}, "DOI": "10.1002/art.41602"},
]  # fmt: skip


def test_two_sentences_of_one_passage_from_different_papers_get_different_references(
    tmp_path: Path, fake_model: EmbeddingModel
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bio.md").write_text(DIGEST, encoding="utf-8")
    (corpus / "bibliography.json").write_text(json.dumps(BIB), encoding="utf-8")
    (corpus / "manifest.csv").write_text(
        "id,file,title,authors,journal,year\n"
        "bio,bio.md,Biologics for refractory myositis,myositis-qa team,myositis-qa digest,2026\n",
        encoding="utf-8",
    )
    settings = make_settings(corpus, tmp_path / "index", embedding={"model": "fake-32"})
    build_index(settings, fake_model, progress=False)
    index = load_index(settings.paths.index_dir, settings.index_identity(32))
    (chunk,) = index.chunks
    assert chunk.sentence_sources == [["RIM13"], ["STIR21"], []]
    chain = QAChain(settings, index, fake_model)
    texts = chunk.sentence_texts()
    answer = chain._cited(
        [DraftSentence(t, (0,)) for t in texts], [Hit(row=0, chunk=chunk)], meta={}
    )
    assert [c.n for c in answer.citations] == [1, 2, 3]
    rim, stir, unattributed = answer.citations
    assert (rim.reference_key, rim.title, rim.doi, rim.pmid) == (
        "RIM13", "Rituximab in refractory myositis", "10.1002/art.37754", "23124935",
    )  # fmt: skip
    assert rim.journal == "Arthritis Rheum 2013;65(2):314-324" and rim.authors == "Oddis CV"
    assert (stir.reference_key, stir.doi) == ("STIR21", "10.1002/art.41602")
    assert rim.digest_title == stir.digest_title == "Biologics for refractory myositis"
    assert rim.section == "Trials" and rim.chunk_id == stir.chunk_id
    # a sentence without a key names the digest itself
    assert (
        unattributed.reference_key == ""
        and unattributed.title == "Biologics for refractory myositis"
    )
    assert answer.answer.count("[1]") == answer.answer.count("[2]") == 1
    # a quoted pair of neighbouring sentences is attributed sentence by sentence
    pair = chain._cited([DraftSentence(" ".join(texts[:2]), (0,))], [Hit(row=0, chunk=chunk)], {})
    assert [c.reference_key for c in pair.citations] == ["RIM13", "STIR21"]
    assert pair.answer == f"{texts[0][:-1]} [1]. {texts[1][:-1]} [2]."


# --- reference-manager exports ---------------------------------------------------------


def write_pdf(path: Path, pages: list[str], doi: str | None = None) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for number, text in enumerate(pages, start=1):
        pdf.add_page()
        if doi and number == 1:
            pdf.multi_cell(0, 6, f"doi:{doi}", new_x="LMARGIN", new_y="NEXT")
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


COURSE_PAGES = {
    "smith": ["Exercise in myositis is safe when it starts at low intensity.",
              "In the course trial, 42 of 60 patients completed the home exercise programme."],
    "jones": ["Capillaroscopy shows dilated capillary loops in many patients with dermatomyositis.",
              "Nailfold changes were seen in 31 of 40 patients with dermatomyositis."],
    "lee": ["Swallowing assessment should be offered to every patient with inclusion body myositis.",
            "Video fluoroscopy found cricopharyngeal bars in 17 of 25 patients with inclusion body myositis."],
}  # fmt: skip
BIBTEX = r"""
@article{smith2024,
  author = {Smith, Jane and M{\"u}ller, Karl},
  title = {{Home exercise} in idiopathic inflammatory myopathy},
  journal = {Course Journal of Myology},
  year = {2024}, volume = {12}, number = {3}, pages = {101--110},
  doi = {10.9999/cjm.2024.101},
  file = {Full Text:C\:/Users/teacher/Zotero/storage/AB12CD/smith2024-home-exercise.pdf:application/pdf},
  note = {PMID: 12345678},
}
@article{jones2023,
  author = {Jones, Peter},
  title = {Nailfold capillaroscopy in dermatomyositis},
  journal = {Course Journal of Myology}, year = {2023},
  doi = {10.9999/cjm.2023.55},
}
@article{lee2022,
  author = {Lee, Ann},
  title = {Dysphagia in inclusion body myositis},
  journal = {Course Journal of Myology}, year = {2022},
}
@article{missing2021,
  author = {Gone, Nobody},
  title = {A paper whose PDF was not copied},
  journal = {Course Journal of Myology}, year = {2021},
  file = {:pdfs/missing2021.pdf:pdf},
}
"""


@pytest.fixture
def course(tmp_path: Path) -> Path:
    corpus = tmp_path / "course"
    # matched by the file field's file name (Zotero exports its own absolute path)
    write_pdf(corpus / "pdfs" / "smith2024-home-exercise.pdf", COURSE_PAGES["smith"])
    # matched by the DOI printed on its first page
    write_pdf(
        corpus / "pdfs" / "capillaroscopy.pdf", COURSE_PAGES["jones"], doi="10.9999/cjm.2023.55"
    )
    # matched by the citation key as file name
    write_pdf(corpus / "pdfs" / "lee2022.pdf", COURSE_PAGES["lee"])
    (corpus / "course.bib").write_text(BIBTEX, encoding="utf-8")
    return corpus


def test_bibtex_export_matches_pdfs_by_file_field_doi_and_file_name(course: Path) -> None:
    plan = plan_sources(course, course / "course.bib")
    matched = {record.id: path.name for record, path in plan.sources}
    assert matched == {
        "smith2024": "smith2024-home-exercise.pdf",
        "jones2023": "capillaroscopy.pdf",
        "lee2022": "lee2022.pdf",
    }
    smith = next(r for r, _ in plan.sources if r.id == "smith2024")
    assert smith.title == "Home exercise in idiopathic inflammatory myopathy"
    assert smith.authors == "Smith J, Müller K"
    assert smith.journal == "Course Journal of Myology 2024;12(3):101-110"
    assert (smith.doi, smith.pmid) == ("10.9999/cjm.2024.101", "12345678")
    (problem,) = plan.problems
    assert problem.name == "missing2021"
    assert "no file under" in problem.reason and "pdfs/missing2021.pdf" in problem.reason


def test_csl_json_export_is_a_manifest_too(course: Path) -> None:
    items = [
        {"id": "smith2024", "title": "Home exercise", "file": ["pdfs/smith2024-home-exercise.pdf"]},
        {"id": "jones2023", "title": "Capillaroscopy", "DOI": "10.9999/CJM.2023.55"},
        {"id": "lee2022", "title": "Dysphagia in IBM"},
    ]
    (course / "course.json").write_text(json.dumps(items), encoding="utf-8")
    (course / "course.bib").unlink()
    plan = plan_sources(course, course / "course.json")
    assert {r.id: p.name for r, p in plan.sources} == {
        "smith2024": "smith2024-home-exercise.pdf",
        "jones2023": "capillaroscopy.pdf",
        "lee2022": "lee2022.pdf",
    }
    assert plan.problems == []


def test_a_broken_export_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(MyoQAError, match="not valid CSL JSON"):
        plan_sources(tmp_path, bad)


@pytest.mark.slow
def test_course_imported_from_bibtex_answers_with_the_right_papers_and_pages(
    course: Path, tmp_path: Path, real_model: EmbeddingModel
) -> None:
    from app.qa.chain import load_chain

    settings: Settings = make_settings(
        course, tmp_path / "course-index", paths={"manifest": course / "course.bib"}
    )
    report = build_index(settings, real_model, progress=False)
    assert report.sources == 3 and [p.name for p in report.skipped] == ["missing2021"]
    chain = load_chain(settings, model=real_model)
    cases = [
        ("How many patients completed the home exercise programme?", "smith2024", 2),
        ("In how many patients with dermatomyositis were nailfold changes seen?", "jones2023", 2),
        ("How often were cricopharyngeal bars found on video fluoroscopy in IBM?", "lee2022", 2),
    ]
    for question, source, page in cases:
        answer = chain.ask(question)
        assert not answer.abstained, (question, answer.answer)
        first = answer.citations[0]
        assert (first.source_id, first.page) == (source, page), (question, answer.contract())
        assert first.reference_key == "" and first.digest_title == ""


TEN_PAPERS = [
    ("What did the RIM trial find for rituximab-early versus rituximab-late?", "RIM13"),
    ("What happened to IIM patients treated with CD19 CAR-T cells?", "MULLER24"),
    ("In the Johns Hopkins antisynthetase cohort, what share of cases had anti-Jo-1?", "PINAL17"),
    ("What is the pooled cancer prevalence in anti-TIF1γ positive adult dermatomyositis?", "BEST19"),
    ("Is IVIG used as initial therapy in statin-related IMNM?", "MCGRATH18"),
    ("How many patients met the IMACS definition of improvement with abatacept in ARTEMIS?", "ARTEMIS18"),
    ("What dose of tofacitinib was used in the STIR study?", "STIR21"),
    ("What is the sensitivity and specificity of sarcoplasmic MxA staining for dermatomyositis?", "URUHA17"),
    ("What were the PRINTO-20 response rates in the PRINTO trial of new-onset JDM?", "PRINTO16"),
    ("How much did dazukibart reduce CDASI activity?", "DAZU25"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bundled_chain(bundled_index: Settings, real_model: EmbeddingModel) -> QAChain:
    from app.qa.chain import load_chain

    return load_chain(bundled_index, model=real_model)


@pytest.mark.slow
@pytest.mark.parametrize(("question", "key"), TEN_PAPERS, ids=[k for _, k in TEN_PAPERS])
def test_ten_questions_from_ten_papers_each_cite_that_paper(
    bundled_index: Settings, bundled_chain: QAChain, question: str, key: str
) -> None:
    chain = bundled_chain
    answer = chain.ask(question)
    assert not answer.abstained, answer.answer
    named = [c.reference_key for c in answer.citations]
    assert key in named, (question, named)
    cited = next(c for c in answer.citations if c.reference_key == key)
    ref = load_index(bundled_index.paths.index_dir).reference(key)
    assert ref is not None and cited.title == ref.title and cited.doi == ref.doi
    assert cited.digest_title and cited.section


def _citation(**fields: object) -> Citation:
    base: dict[str, object] = {
        "n": 1,
        "source_id": "biologics-jak-inhibitors",
        "title": "Rituximab in refractory myositis",
        "authors": "Oddis CV",
        "journal": "Arthritis Rheum 2013;65(2):314-324",
        "year": "2013",
        "doi": "10.1002/art.37754",
        "pmid": "23124935",
        "section": "Rituximab: the RIM trial",
        "chunk_id": "abc",
        "passage": "The RIM trial enrolled 200 refractory patients.",
        "reference_key": "RIM13",
        "reference_keys": ["RIM13"],
        "digest_title": "Biologics <script>alert(1)</script> and JAK inhibitors",
    }
    base.update(fields)
    return Citation.model_validate(base)


def test_sources_panel_and_cli_name_the_paper_and_where_the_passage_sits() -> None:
    html = render_citation(_citation(), turn=0)
    assert "Rituximab in refractory myositis" in html
    assert (
        "https://doi.org/10.1002/art.37754" in html and "pubmed.ncbi.nlm.nih.gov/23124935" in html
    )
    assert (
        "in: myositis-qa digest <em>Biologics &lt;script&gt;alert(1)&lt;/script&gt; and JAK "
        "inhibitors</em>, section <em>Rituximab: the RIM trial</em>"
    ) in html
    assert "<script>" not in html
    # a PDF's citation names the PDF itself and shows its section plainly
    pdf = render_citation(_citation(digest_title="", reference_key="", page=3), turn=0)
    assert "in: myositis-qa digest" not in pdf and "Section: Rituximab" in pdf and "p. 3" in pdf
    text = format_answer(
        Answer(
            answer="RIM found no difference [1].", citations=[_citation(digest_title="Biologics")]
        )
    )
    assert (
        "[1] Rituximab in refractory myositis (Oddis CV. Arthritis Rheum 2013;65(2):314-324). "
        "in: myositis-qa digest Biologics, section Rituximab: the RIM trial, doi:10.1002/art.37754"
    ) in text


def test_unknown_keys_are_reported_and_a_changed_bibliography_rebuilds(
    tmp_path: Path, fake_model: EmbeddingModel
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bio.md").write_text(DIGEST.replace("@STIR21", "@NOPE99"), encoding="utf-8")
    (corpus / "bibliography.json").write_text(json.dumps(BIB), encoding="utf-8")
    (corpus / "manifest.csv").write_text(
        "id,file,title,authors,journal,year\nbio,bio.md,Bio,myositis-qa team,digest,2026\n",
        encoding="utf-8",
    )
    settings = make_settings(corpus, tmp_path / "index", embedding={"model": "fake-32"})
    report = build_index(settings, fake_model, progress=False)
    assert report.warnings == ["bio.md: citation key(s) not in the bibliography: NOPE99"]
    assert is_up_to_date(settings)
    (corpus / "bibliography.json").write_text(json.dumps(BIB[:1]), encoding="utf-8")
    assert not is_up_to_date(settings)
    build_index(settings, fake_model, progress=False)
    index = load_index(settings.paths.index_dir, settings.index_identity(32))
    assert set(index.manifest.references) == {"RIM13"}


def test_an_index_of_the_previous_schema_asks_for_a_rebuild(
    tmp_path: Path, fake_model: EmbeddingModel
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bio.md").write_text(DIGEST, encoding="utf-8")
    (corpus / "manifest.csv").write_text("id,file,title\nbio,bio.md,Bio\n", encoding="utf-8")
    settings = make_settings(corpus, tmp_path / "index", embedding={"model": "fake-32"})
    build_index(settings, fake_model, progress=False)
    manifest = settings.paths.index_dir / "current" / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["identity"]["schema_version"] = 1
    manifest.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(MyoQAError, match=r"schema version 1.*--rebuild"):
        load_index(settings.paths.index_dir, settings.index_identity(32))
