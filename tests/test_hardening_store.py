"""Issue 14, the index and feedback half: each test reproduces one defect of the probe.

- item 2: the index swap is one atomic rename; a build killed at any step leaves a
  loadable index, and the next build (or server start) removes what it left;
- item 6: a manifest lacking a source its chunks cite is refused at load;
- item 7: flipped vector bytes and edited or shuffled chunk lines are refused at load;
- item 8: INSERT OR REPLACE / REPLACE INTO / upserts cannot rewrite a vote;
- item 9: a full or read-only disk gives one line naming the folder and the cause;
- item 10: the inconsistent-index message gives the right counts; ``feedback export``
  writes the same permissions with and without --force; CSV cells starting with
  blanks plus ``=`` (or ``＝``, ``+``, ``-``, ``@``) are escaped;
- item 11: re-running ``index`` on a corpus whose only problems are skipped files
  does not load the model and lists each skipped file once.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import indexer.embeddings
from app.cli.main import main as cli
from app.feedback import EXPORT_MODE, FeedbackStore
from indexer import store
from indexer.build import build_index, is_up_to_date
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.settings import Settings
from indexer.store import (
    CHUNKS_FILE,
    CURRENT_LINK,
    LOCK_FILE,
    MANIFEST_FILE,
    SENTENCES_FILE,
    VECTORS_FILE,
    current_version,
    leftovers,
    load_index,
    recover,
)
from tests.conftest import DATA, ROOT, make_settings

NEW_IBM = "# IBM\n\n## New\n\nInclusion body myositis spares the facial muscles in the new text.\n"

#: Every step of ``write_index``, in order (a test checks the list is complete).
STEPS = [
    "locked",
    f"wrote {VECTORS_FILE}",
    f"wrote {SENTENCES_FILE}",
    f"wrote {CHUNKS_FILE}",
    f"wrote {MANIFEST_FILE}",
    "renamed the version folder",
    "made the new link",
    "swapped current",
    "tidied",
]

#: Builds the index in a child process that dies (os._exit, like kill -9) at one step.
CRASHING_BUILD = """
import os, sys
from pathlib import Path
from langchain_core.embeddings import DeterministicFakeEmbedding
import indexer.store as store
from indexer.build import build_index
from indexer.embeddings import wrap_embeddings
from indexer.settings import Settings

corpus, index_dir, step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def checkpoint(name):
    if name == step:
        os._exit(75)

store._checkpoint = checkpoint
settings = Settings(
    paths={"corpus_dir": corpus, "manifest": corpus / "manifest.csv", "index_dir": index_dir},
    embedding={"model": "fake-32"},
)
model = wrap_embeddings(DeterministicFakeEmbedding(size=32), model_id="fake-32", dim=32)
build_index(settings, model, progress=False)
"""


def crash_build_at(settings: Settings, step: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYOQA_")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_BUILD,
            str(settings.paths.corpus_dir),
            str(settings.paths.index_dir),
            step,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 75), done.stderr
    return done.returncode


def texts(index_dir: Path) -> set[str]:
    return {c.text for c in load_index(index_dir).chunks}


def index_entries(index_dir: Path) -> list[str]:
    """What a clean index folder holds: the link, the lock and exactly one version."""
    return sorted(p.name if not p.name.startswith("v-") else "v-*" for p in index_dir.iterdir())


# --- item 2: atomic swap, recovery, clean-up --------------------------------------------------


def test_every_step_of_the_write_is_covered(
    tiny_settings: Settings, fake_model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(store, "_checkpoint", seen.append)
    build_index(tiny_settings, fake_model, progress=False)
    assert seen == STEPS


@pytest.mark.parametrize("step", STEPS)
def test_build_killed_at_each_step_leaves_an_index_and_the_next_build_cleans_up(
    tiny_settings: Settings, fake_model: EmbeddingModel, step: str
) -> None:
    index_dir = tiny_settings.paths.index_dir
    build_index(tiny_settings, fake_model, progress=False)
    old = texts(index_dir)
    (tiny_settings.paths.corpus_dir / "ibm.md").write_text(NEW_IBM, encoding="utf-8")

    assert crash_build_at(tiny_settings, step) == 75  # it died exactly there

    swapped = STEPS.index(step) >= STEPS.index("swapped current")
    served = texts(index_dir)  # never "No index found", never a mix
    if swapped:
        assert any("spares the facial muscles" in t for t in served)
    else:
        assert served == old
    recover(index_dir)  # what a server start does
    assert leftovers(index_dir) == []
    assert texts(index_dir) == served

    build_index(tiny_settings, fake_model, progress=False)
    assert any("spares the facial muscles" in t for t in texts(index_dir))
    assert index_entries(index_dir) == [LOCK_FILE, CURRENT_LINK, "v-*"]
    assert [p.name for p in index_dir.parent.iterdir() if p.name.startswith(".index")] == []


def test_leftovers_of_a_killed_build_are_removed_by_the_next_build(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    index_dir = tiny_settings.paths.index_dir
    build_index(tiny_settings, fake_model, progress=False)
    (tiny_settings.paths.corpus_dir / "ibm.md").write_text(NEW_IBM, encoding="utf-8")
    crash_build_at(tiny_settings, "made the new link")
    names = {p.name.split("-")[0] for p in leftovers(index_dir)}
    assert names == {".current", "v"}  # the unswapped version and its link
    build_index(tiny_settings, fake_model, progress=False)
    assert leftovers(index_dir) == []


def test_first_build_killed_before_the_swap_says_no_index_then_builds(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    index_dir = tiny_settings.paths.index_dir
    crash_build_at(tiny_settings, "renamed the version folder")
    with pytest.raises(MyoQAError, match=r"No index found .*myositis-qa index"):
        load_index(index_dir)
    build_index(tiny_settings, fake_model, progress=False)
    assert load_index(index_dir).manifest.n_chunks > 0
    assert index_entries(index_dir) == [LOCK_FILE, CURRENT_LINK, "v-*"]


def test_an_old_layout_interrupted_between_its_two_renames_is_recovered(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    """The probe's case: no index/ at all, the old and new ones in hidden folders."""
    index_dir = tiny_settings.paths.index_dir
    build_index(tiny_settings, fake_model, progress=False)
    version = current_version(index_dir)
    assert version is not None
    parent = index_dir.parent
    shutil.copytree(version, parent / ".index.old-k3j9")
    shutil.copytree(version, parent / ".index.building-k3j9")
    shutil.rmtree(index_dir)
    with pytest.raises(MyoQAError, match=r"No index found.*\.index\.old-k3j9"):
        load_index(index_dir)

    report = build_index(tiny_settings, fake_model, progress=False)
    assert report.chunks == load_index(index_dir).manifest.n_chunks
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith(".index")) == []


def test_a_flat_index_of_the_old_layout_is_replaced_cleanly(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    index_dir = tiny_settings.paths.index_dir
    build_index(tiny_settings, fake_model, progress=False)
    version = current_version(index_dir)
    assert version is not None
    flat = index_dir.parent / "flat"
    shutil.copytree(version, flat)
    manifest = json.loads((flat / MANIFEST_FILE).read_text())
    del manifest["checksums"]  # the old layout recorded none
    (flat / MANIFEST_FILE).write_text(json.dumps(manifest))
    shutil.rmtree(index_dir)
    flat.rename(index_dir)
    with pytest.raises(MyoQAError, match=r"without file checksums.*--rebuild"):
        load_index(index_dir)
    assert not is_up_to_date(tiny_settings)
    build_index(tiny_settings, fake_model, progress=False)
    assert load_index(index_dir).manifest.checksums
    assert index_entries(index_dir) == [LOCK_FILE, CURRENT_LINK, "v-*"]


def test_tidy_up_never_touches_a_build_in_progress(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    index_dir = tiny_settings.paths.index_dir
    build_index(tiny_settings, fake_model, progress=False)
    in_progress = index_dir / ".building-abc"
    in_progress.mkdir()
    with store.index_lock(index_dir):  # another process is writing
        recover(index_dir)
        assert in_progress.exists()
    recover(index_dir)
    assert not in_progress.exists()


# --- items 6, 7 and 10: damaged or inconsistent indexes are refused at load -----------------


@pytest.fixture
def built(tiny_settings: Settings, fake_model: EmbeddingModel) -> Path:
    """The tiny index; returns the folder of its current version."""
    build_index(tiny_settings, fake_model, progress=False)
    version = current_version(tiny_settings.paths.index_dir)
    assert version is not None
    return version


def edit_manifest(version: Path, change: object) -> None:
    path = version / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


def test_manifest_without_a_source_its_chunks_cite_is_refused(
    tiny_settings: Settings, built: Path
) -> None:
    edit_manifest(built, lambda m: m["sources"].pop("ibm"))
    with pytest.raises(MyoQAError, match=r"quote source\(s\) ibm that its manifest does not list"):
        load_index(tiny_settings.paths.index_dir)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # inside the last vector's float32s
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [VECTORS_FILE, SENTENCES_FILE])
def test_flipped_vector_bytes_are_refused(tiny_settings: Settings, built: Path, name: str) -> None:
    flip_last_byte(built / name)
    with pytest.raises(MyoQAError) as refused:
        load_index(tiny_settings.paths.index_dir)
    message = str(refused.value)
    assert f"damaged: {name} does not match the checksum" in message
    assert "myositis-qa index --rebuild" in message


def test_edited_chunk_text_is_refused(tiny_settings: Settings, built: Path) -> None:
    path = built / CHUNKS_FILE
    assert "78.7%" in path.read_text()
    path.write_text(path.read_text().replace("78.7%", "87.7%"))
    with pytest.raises(MyoQAError, match=rf"damaged: {CHUNKS_FILE} does not match.*--rebuild"):
        load_index(tiny_settings.paths.index_dir)


def test_shuffled_chunk_lines_are_refused(tiny_settings: Settings, built: Path) -> None:
    path = built / CHUNKS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(reversed(lines)))
    with pytest.raises(MyoQAError, match=rf"damaged: {CHUNKS_FILE}"):
        load_index(tiny_settings.paths.index_dir)


def test_a_plain_index_run_repairs_a_damaged_index(
    tiny_settings: Settings, built: Path, fake_model: EmbeddingModel
) -> None:
    flip_last_byte(built / VECTORS_FILE)
    assert not is_up_to_date(tiny_settings)  # the no-change shortcut checks the files too
    report = build_index(tiny_settings, fake_model, progress=False)
    assert report.full_rebuild  # nothing reused from the damaged files
    assert load_index(tiny_settings.paths.index_dir).manifest.n_chunks == report.chunks


def test_inconsistent_counts_are_reported_as_they_are(tiny_settings: Settings, built: Path) -> None:
    n = json.loads((built / MANIFEST_FILE).read_text())["n_chunks"]
    edit_manifest(built, lambda m: m.update(n_chunks=n - 1))
    with pytest.raises(MyoQAError) as refused:
        load_index(tiny_settings.paths.index_dir)
    assert (
        f"the manifest lists {n - 1} chunks, {CHUNKS_FILE} holds {n} and {VECTORS_FILE} {n} vectors"
        in str(refused.value)
    )


# --- item 9: full or read-only disk --------------------------------------------------------------


def full_disk(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_one_line_naming_the_folder_and_keeps_the_old_index(
    tiny_settings: Settings,
    built: Path,
    fake_model: EmbeddingModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index_dir = tiny_settings.paths.index_dir
    old = texts(index_dir)
    (tiny_settings.paths.corpus_dir / "ibm.md").write_text(NEW_IBM, encoding="utf-8")
    monkeypatch.setattr(store, "_write_file", full_disk)
    with pytest.raises(MyoQAError) as refused:
        build_index(tiny_settings, fake_model, progress=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"Cannot write the index in {index_dir.absolute()}: ")
    assert "No space left on device (ENOSPC)" in message and "Free some space" in message
    assert texts(index_dir) == old
    assert leftovers(index_dir) == []


def test_cli_index_on_a_full_disk_prints_one_line_and_no_traceback(
    tiny_settings: Settings,
    fake_model: EmbeddingModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(indexer.embeddings, "load_embedding_model", lambda *a, **k: fake_model)
    monkeypatch.setattr(store, "_write_file", full_disk)
    result = CliRunner().invoke(cli, index_args(tiny_settings))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert str(tiny_settings.paths.index_dir) in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_folder_is_one_line(
    tiny_settings: Settings, built: Path, fake_model: EmbeddingModel
) -> None:
    index_dir = tiny_settings.paths.index_dir
    (tiny_settings.paths.corpus_dir / "ibm.md").write_text(NEW_IBM, encoding="utf-8")
    index_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(MyoQAError, match=r"Cannot write the index in .*: Permission denied"):
            build_index(tiny_settings, fake_model, progress=False)
    finally:
        index_dir.chmod(0o755)


def test_read_only_file_system_is_one_line(
    tiny_settings: Settings, fake_model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tiny_settings.paths.index_dir))

    monkeypatch.setattr(store.tempfile, "mkdtemp", read_only)
    with pytest.raises(MyoQAError) as refused:
        build_index(tiny_settings, fake_model, progress=False)
    message = str(refused.value)
    assert "\n" not in message and "Read-only file system (EROFS)" in message
    assert "Make it writable" in message


def test_index_folder_that_cannot_exist_is_one_line(
    tiny_corpus: Path, tmp_path: Path, fake_model: EmbeddingModel
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = make_settings(tiny_corpus, blocker / "index", embedding={"model": "fake-32"})
    with pytest.raises(
        MyoQAError, match=r"Cannot write the index in .*a-file/index: Not a directory"
    ):
        build_index(settings, fake_model, progress=False)


# --- item 11: only skipped files -------------------------------------------------------------------


def index_args(settings: Settings) -> list[str]:
    return [
        "index",
        "--no-progress",
        "--corpus-dir",
        str(settings.paths.corpus_dir),
        "--manifest",
        str(settings.paths.manifest),
        "--index-dir",
        str(settings.paths.index_dir),
    ]


def test_rerun_with_only_skipped_files_loads_no_model_and_lists_each_once(
    tiny_settings: Settings, fake_model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tiny_settings.paths.corpus_dir
    shutil.copy(DATA / "corrupt.pdf", corpus / "corrupt.pdf")
    with tiny_settings.paths.manifest.open("a") as handle:
        handle.write("corrupt,corrupt.pdf,A corrupt PDF,,,,,\n")
    (corpus / "unlisted.md").write_text("# Unlisted\n\nSome text.\n")
    loads: list[int] = []

    def load_model(*args: object, **kwargs: object) -> EmbeddingModel:
        loads.append(1)
        return fake_model

    monkeypatch.setattr(indexer.embeddings, "load_embedding_model", load_model)
    monkeypatch.setenv("MYOQA_EMBEDDING__MODEL", "fake-32")
    runner = CliRunner()
    first = runner.invoke(cli, index_args(tiny_settings))
    assert first.exit_code == 0, first.output
    assert first.output.count("corrupt.pdf") == 1 and first.output.count("unlisted.md") == 1
    assert loads == [1]

    again = runner.invoke(cli, index_args(tiny_settings))
    assert again.exit_code == 0, again.output
    assert "is up to date" in again.output
    assert again.output.count("corrupt.pdf") == 1 and again.output.count("unlisted.md") == 1
    assert loads == [1]  # the model was not loaded again

    strict = runner.invoke(cli, [*index_args(tiny_settings), "--strict"])
    assert strict.exit_code == 1 and "--strict: 2 file(s)" in strict.output

    (corpus / "corrupt.pdf").write_text("Now a text about IBM.\n")  # the educator fixes it
    (corpus / "corrupt.pdf").rename(corpus / "fixed.txt")
    manifest = tiny_settings.paths.manifest
    manifest.write_text(manifest.read_text().replace("corrupt.pdf", "fixed.txt"))
    fixed = runner.invoke(cli, index_args(tiny_settings))
    assert fixed.exit_code == 0, fixed.output
    assert loads == [1, 1] and "fixed.txt" not in fixed.output


def test_a_changed_skipped_file_is_retried(
    tiny_settings: Settings, fake_model: EmbeddingModel
) -> None:
    corpus = tiny_settings.paths.corpus_dir
    shutil.copy(DATA / "empty.pdf", corpus / "broken.txt")
    with tiny_settings.paths.manifest.open("a") as handle:
        handle.write("broken,broken.txt,Broken,,,,,\n")
    build_index(tiny_settings, fake_model, progress=False)
    assert is_up_to_date(tiny_settings)
    (corpus / "broken.txt").write_text("Inclusion body myositis is slowly progressive.\n")
    assert not is_up_to_date(tiny_settings)
    build_index(tiny_settings, fake_model, progress=False)
    assert "broken" in load_index(tiny_settings.paths.index_dir).manifest.sources


# --- item 8: insert-only feedback -----------------------------------------------------------------


def votes(path: Path) -> FeedbackStore:
    feedback = FeedbackStore(path, version="1.0")
    for n in (1, 2):
        feedback.add(question=f"q{n}", answer=f"a{n}", citations=[], rating="up", comment=f"c{n}")
    return feedback


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT OR REPLACE INTO feedback (id, created_at, app_version, question, answer, "
        "citations, rating) VALUES (1, 'x', 'x', 'forged', 'forged', '[]', 'down')",
        "REPLACE INTO feedback (id, created_at, app_version, question, answer, citations, "
        "rating) VALUES (1, 'x', 'x', 'forged', 'forged', '[]', 'down')",
        "INSERT INTO feedback (id, created_at, app_version, question, answer, citations, "
        "rating) VALUES (1, 'x', 'x', 'forged', 'forged', '[]', 'down') "
        "ON CONFLICT(id) DO UPDATE SET rating = 'down'",
        "UPDATE feedback SET rating = 'down' WHERE id = 1",
        "DELETE FROM feedback WHERE id = 1",
    ],
)
def test_no_statement_rewrites_a_stored_vote(tmp_path: Path, sql: str) -> None:
    feedback = votes(tmp_path / "fb.sqlite3")
    before = feedback.rows()
    with (
        sqlite3.connect(feedback.path) as conn,
        pytest.raises(sqlite3.DatabaseError, match="insert-only"),
    ):
        conn.execute(sql)
    assert feedback.rows() == before


def test_caller_chosen_ids_cannot_block_later_votes(tmp_path: Path) -> None:
    feedback = votes(tmp_path / "fb.sqlite3")
    with sqlite3.connect(feedback.path) as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute(
            "INSERT INTO feedback (id, created_at, app_version, question, answer, citations, "
            "rating) VALUES (-1, 'x', 'x', 'q', 'a', '[]', 'up')"
        )
    assert feedback.add(question="q3", answer="a3", citations=[], rating="down") == 3
    assert [r.id for r in feedback.rows()] == [1, 2, 3]


def test_a_database_made_before_the_fix_gets_the_new_triggers(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # what version 1 of the schema created
        conn.executescript(
            "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL,"
            " app_version TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL,"
            " citations TEXT NOT NULL, rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),"
            " comment TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL DEFAULT '',"
            " channel TEXT NOT NULL DEFAULT ''); PRAGMA user_version = 1;"
        )
    feedback = FeedbackStore(path)
    feedback.add(question="q", answer="a", citations=[], rating="up")
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.DatabaseError, match="insert-only"):
        conn.execute(
            "REPLACE INTO feedback (id, created_at, app_version, question, answer, citations, "
            "rating) VALUES (1, 'x', 'x', 'forged', 'forged', '[]', 'down')"
        )
    assert feedback.rows()[0].question == "q"


# --- item 10: feedback export ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "comment",
    [" =1+1", "\t=cmd|' /C calc'!A0", "\u3000=1+1", "\u200b=1+1", "＝1+1", " ＝1+1", "＋1", "－1",
     "＠SUM(A1)", "  +1", " -1", "\n@SUM(A1)", "=1"],
)  # fmt: skip
def test_csv_escapes_formulas_behind_blanks_and_full_width_signs(
    tmp_path: Path, comment: str
) -> None:
    feedback = FeedbackStore(tmp_path / "fb.sqlite3")
    feedback.add(question="q", answer="a", citations=[], rating="up", comment=comment)
    out = tmp_path / "out.csv"
    feedback.export_csv(out)
    with out.open(encoding="utf-8", newline="") as handle:
        row = next(csv.DictReader(handle))
    stored = comment.strip()  # the store strips comments
    assert row["comment"] == "'" + stored


def test_csv_leaves_plain_text_alone(tmp_path: Path) -> None:
    feedback = FeedbackStore(tmp_path / "fb.sqlite3")
    feedback.add(question="q", answer="a", citations=[], rating="up", comment="Clear, 2 = 2")
    out = tmp_path / "out.csv"
    feedback.export_csv(out)
    assert "'Clear" not in out.read_text()


def test_export_permissions_are_the_same_with_and_without_force(tmp_path: Path) -> None:
    db = tmp_path / "fb.sqlite3"
    votes(db)
    out = tmp_path / "feedback.csv"
    runner = CliRunner()
    old_umask = os.umask(0o022)
    try:
        plain = runner.invoke(cli, ["feedback", "export", "--csv", str(out), "--db", str(db)])
        assert plain.exit_code == 0, plain.output
        mode_plain = stat.S_IMODE(out.stat().st_mode)
        forced = runner.invoke(
            cli, ["feedback", "export", "--csv", str(out), "--db", str(db), "--force"]
        )
        assert forced.exit_code == 0, forced.output
        mode_forced = stat.S_IMODE(out.stat().st_mode)
    finally:
        os.umask(old_umask)
    assert mode_plain == mode_forced == EXPORT_MODE


def test_an_index_folder_copied_without_symlinks_still_loads_and_rebuilds(
    tiny_settings: Settings, fake_model: EmbeddingModel, tmp_path: Path
) -> None:
    build_index(tiny_settings, fake_model, progress=False)
    copy = tmp_path / "copied-index"
    shutil.copytree(tiny_settings.paths.index_dir, copy, symlinks=False)  # like cp -r
    assert (copy / CURRENT_LINK).is_dir() and not (copy / CURRENT_LINK).is_symlink()
    assert load_index(copy).manifest.n_chunks > 0
    settings = make_settings(tiny_settings.paths.corpus_dir, copy, embedding={"model": "fake-32"})
    (settings.paths.corpus_dir / "ibm.md").write_text(NEW_IBM, encoding="utf-8")
    build_index(settings, fake_model, progress=False)
    assert (copy / CURRENT_LINK).is_symlink()
    assert any("spares the facial muscles" in t for t in texts(copy))
    assert index_entries(copy) == [LOCK_FILE, CURRENT_LINK, "v-*"]
