"""The docs match the code, and the bundled corpus is what its manifest says."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from indexer.settings import settings_table
from indexer.sources import MANIFEST_COLUMNS, SUPPORTED_SUFFIXES, plan_sources, read_manifest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"


def test_readme_settings_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- settings-table:start -->\n(.*)\n<!-- settings-table:end -->", readme, re.S
    )
    assert block, "README lacks the settings table markers"
    assert block.group(1) == settings_table(), "regenerate with: myositis-qa settings --table"


def test_manifest_rows_point_to_files_with_unique_ids_and_required_fields() -> None:
    records, problems = read_manifest(CORPUS / "manifest.csv")
    assert problems == []
    with (CORPUS / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == MANIFEST_COLUMNS
    assert len({r.id for r in records}) == len(records) >= 16
    for record in records:
        assert (CORPUS / record.file).is_file(), record.file
        assert record.title and record.authors and record.journal and record.year, record.id
        assert record.doi or record.pmid or record.journal, record.id
        if record.doi:
            assert record.doi.startswith("10."), record.id
            assert record.url == f"https://doi.org/{record.doi}", record.id
        if record.pmid:
            assert record.pmid.isdigit(), record.id


def test_every_corpus_file_has_a_row() -> None:
    plan = plan_sources(CORPUS, CORPUS / "manifest.csv")
    assert plan.problems == []
    listed = {path for _, path in plan.sources}
    on_disk = {p.resolve() for p in CORPUS.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES}
    assert on_disk == listed


def test_digests_are_articles_of_the_promised_size() -> None:
    total = 0
    for path in sorted((CORPUS / "reviews").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        words = len(text.split())
        total += words
        assert 700 <= words <= 2000, f"{path.name}: {words} words"
        assert text.startswith("# "), path.name
        assert len(re.findall(r"^## ", text, re.M)) >= 3, f"{path.name} needs sections"
    assert total >= 15000
