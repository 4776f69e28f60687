"""The feedback store: a real SQLite file, insert-only, safe under concurrent writers; CSV export."""

from __future__ import annotations

import csv
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli.serve import feedback as feedback_group
from app.feedback import CSV_COLUMNS, FeedbackStore
from indexer.errors import MyoQAError
from tests.fixtures.fake_chain import mda5_citation


def vote(store: FeedbackStore, i: int, rating: str = "up", comment: str = "") -> int:
    return store.add(
        question=f"question {i}",
        answer=f"answer {i} [1]",
        citations=[mda5_citation(1).model_dump()],
        rating=rating,
        comment=comment,
        mode="extractive",
        channel="test",
    )


def test_rows_round_trip_with_time_and_version(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "sub" / "fb.sqlite3", version="1.2.3")
    first = vote(store, 1, "up", "clear and cited")
    second = vote(store, 2, "down")
    assert second == first + 1
    rows = store.rows()
    assert [r.question for r in rows] == ["question 1", "question 2"]
    assert rows[0].comment == "clear and cited" and rows[1].rating == "down"
    assert rows[0].citations[0]["source_id"] == "mda5"
    assert rows[0].app_version == "1.2.3" and rows[0].created_at.endswith("+00:00")
    assert store.count() == 2
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_version_is_the_package_version(tmp_path: Path) -> None:
    from app.feedback import app_version

    assert FeedbackStore(tmp_path / "fb.sqlite3").version == app_version() != ""


def test_rows_can_never_be_updated_or_deleted(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    vote(store, 1)
    with sqlite3.connect(store.path) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="insert-only"):
            conn.execute("UPDATE feedback SET rating = 'down'")
        with pytest.raises(sqlite3.DatabaseError, match="insert-only"):
            conn.execute("DELETE FROM feedback")
    assert [r.rating for r in store.rows()] == ["up"]


def test_bad_votes_are_refused(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    with pytest.raises(MyoQAError, match="'up' or 'down'"):
        vote(store, 1, rating="meh")
    with pytest.raises(MyoQAError, match="limit is 2000"):
        vote(store, 1, comment="x" * 2001)
    assert store.count() == 0


def test_concurrent_writes_from_threads_are_all_kept(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    threads, per_thread = 12, 40
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            try:
                vote(store, t * 1000 + i, "up" if i % 2 else "down", f"thread {t}")
            except BaseException as exc:
                failures.append(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert failures == []
    rows = store.rows()
    assert len(rows) == threads * per_thread
    assert {r.question for r in rows} == {
        f"question {t * 1000 + i}" for t in range(threads) for i in range(per_thread)
    }
    assert len({r.id for r in rows}) == len(rows)


def _process_writer(path: str, start: int, count: int) -> None:
    store = FeedbackStore(path)
    for i in range(count):
        vote(store, start + i)


def test_concurrent_writes_from_processes_are_all_kept(tmp_path: Path) -> None:
    """Several server processes may share one file (e.g. uvicorn workers)."""
    path = tmp_path / "fb.sqlite3"
    FeedbackStore(path).count()  # create the schema once
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_process_writer, args=(str(path), p * 1000, 30)) for p in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    assert FeedbackStore(path).count() == 90


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_csv(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3", version="0.1.0")
    vote(store, 1, "up", "great, with an é and a\nnewline")
    vote(store, 2, "down", '=HYPERLINK("http://evil")')
    out = tmp_path / "out" / "feedback.csv"
    assert store.export_csv(out) == 2
    rows = read_csv(out)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert rows[0]["question"] == "question 1" and rows[0]["rating"] == "up"
    assert rows[0]["comment"] == "great, with an é and a\nnewline"
    assert rows[0]["cited_sources"] == "[1] mda5"
    assert '"source_id": "mda5"' in rows[0]["citations"]
    assert rows[0]["app_version"] == "0.1.0" and rows[0]["created_at"]
    assert rows[1]["comment"] == '\'=HYPERLINK("http://evil")'  # no formula runs in a spreadsheet


def test_export_never_overwrites_unless_forced(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    vote(store, 1)
    out = tmp_path / "feedback.csv"
    out.write_text("precious", encoding="utf-8")
    with pytest.raises(MyoQAError, match="already exists; use --force"):
        store.export_csv(out)
    assert out.read_text(encoding="utf-8") == "precious"
    assert store.export_csv(out, force=True) == 1
    assert read_csv(out)[0]["question"] == "question 1"
    assert list(tmp_path.glob(".feedback.csv.*")) == []  # no temp file left behind
    with pytest.raises(MyoQAError, match="is a folder"):
        store.export_csv(tmp_path)


def test_export_without_a_database_says_so(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "none.sqlite3")
    with pytest.raises(MyoQAError, match="no feedback database"):
        store.export_csv(tmp_path / "out.csv")
    assert not (tmp_path / "none.sqlite3").exists()


def test_cli_export(tmp_path: Path) -> None:
    db = tmp_path / "fb.sqlite3"
    store = FeedbackStore(db)
    vote(store, 1)
    vote(store, 2, "down")
    out = tmp_path / "feedback.csv"
    runner = CliRunner()
    result = runner.invoke(feedback_group, ["export", "--csv", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert f"Exported 2 feedback rows to {out}" in result.output
    assert len(read_csv(out)) == 2

    again = runner.invoke(feedback_group, ["export", "--csv", str(out), "--db", str(db)])
    assert again.exit_code == 1
    assert "already exists; use --force to replace it." in again.output

    forced = runner.invoke(
        feedback_group, ["export", "--csv", str(out), "--db", str(db), "--force"]
    )
    assert forced.exit_code == 0, forced.output


def test_cli_export_reads_the_settings_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "from-env.sqlite3"
    vote(FeedbackStore(db), 1)
    monkeypatch.setenv("MYOQA_PATHS__FEEDBACK_DB", str(db))
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(feedback_group, ["export", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 1
    missing = CliRunner().invoke(
        feedback_group,
        ["export", "--csv", str(tmp_path / "x.csv"), "--db", str(tmp_path / "no.db")],
    )
    assert missing.exit_code == 1 and "no feedback database" in missing.output
