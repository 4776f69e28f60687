"""A bounded load test on loopback: 20 clients, a few hundred questions, a fixed time limit.

Every request must be answered (200/201) or cleanly refused (429); no 5xx, no
transport error; every accepted vote must be a row in the feedback database.
Throughput and p95 are written to test-artifacts/ and printed, never asserted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.web.server import background_server, build_server
from evals.loadtest import FALLBACK_QUESTIONS, LoadResult, check_loopback, read_questions, run_load
from indexer.errors import MyoQAError
from indexer.store import index_exists
from tests.fixtures.fake_chain import FakeChain
from tests.fixtures.live import ARTIFACTS, chat_settings

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 240.0


def report(result: LoadResult, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(
        json.dumps(result.to_dict(), indent=2), encoding="utf-8"
    )
    print(f"\n{name}:\n{result.summary()}")


def assert_clean(result: LoadResult) -> None:
    assert result.errors == []
    assert set(result.status_counts) <= {200, 429}, result.status_counts
    assert set(result.feedback_status_counts) <= {201, 429}, result.feedback_status_counts
    assert result.server_errors == 0
    assert result.asked == result.planned or result.stopped_by_time_limit
    assert result.answered > 0
    assert result.feedback_rows == result.feedback_accepted  # no vote lost or duplicated
    assert result.ok


def test_load_with_the_fake_chain(tmp_path: Path) -> None:
    # 20 clients x 15 questions, each answered question also votes: 15 questions per
    # client against a limit of 10 per minute (votes have a bucket of their own), so the
    # rate limit is exercised too.
    settings = chat_settings(tmp_path, server={"rate_limit_per_minute": 10})
    chain = FakeChain(delay_s=0.005)
    app, _ = build_server(settings, chain)
    with background_server(app, settings) as url:
        result = run_load(
            url,
            list(FALLBACK_QUESTIONS),
            clients=20,
            total=300,
            time_limit_s=TIME_LIMIT_S,
            feedback_db=settings.paths.feedback_db,
        )
    report(result, "loadtest-fake-chain")
    assert_clean(result)
    assert result.status_counts[429] > 0  # the per-client limit answered, cleanly
    assert len(chain.calls) == result.answered


def test_loadtest_refuses_other_hosts_and_unbounded_runs() -> None:
    with pytest.raises(MyoQAError, match="only runs against loopback"):
        check_loopback("http://example.org:7860")
    check_loopback("http://127.0.0.1:7860")
    check_loopback("http://localhost:7860")
    with pytest.raises(MyoQAError, match="clients must be"):
        run_load("http://127.0.0.1:1", ["q"], clients=1000)
    with pytest.raises(MyoQAError, match="time_limit_s"):
        run_load("http://127.0.0.1:1", ["q"], time_limit_s=0)


def test_loadtest_counts_transport_errors() -> None:
    result = run_load(
        "http://127.0.0.1:9", ["q"], clients=2, total=4, time_limit_s=10, request_timeout_s=2
    )
    assert len(result.errors) == 4 and not result.ok


def test_read_questions(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "What is IBM?", "in_scope": true}\n', encoding="utf-8")
    assert read_questions(path) == ["What is IBM?"]
    assert read_questions(None) == list(FALLBACK_QUESTIONS)


@pytest.fixture(scope="module")
def real_index(request: pytest.FixtureRequest) -> Path:
    pytest.importorskip("app.qa.chain")
    if index_exists(ROOT / "index") and not os.environ.get("MYOQA_TEST_FRESH_INDEX"):
        return ROOT / "index"
    return Path(request.getfixturevalue("bundled_index").paths.index_dir)


@pytest.fixture
def real_url(real_index: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    settings = chat_settings(
        tmp_path, paths={"index_dir": real_index, "feedback_db": tmp_path / "fb.sqlite3"}
    )
    app, managed = build_server(settings)
    managed.load()
    if managed.status()["error"]:
        pytest.fail(f"The real chain did not load: {managed.status()['error']}")
    with background_server(app, settings) as url:
        yield url, settings.paths.feedback_db


@pytest.mark.slow
def test_load_with_the_real_chain(real_url: tuple[str, Path]) -> None:
    url, db = real_url
    questions = read_questions(ROOT / "evals" / "questions" / "dev.jsonl")
    result = run_load(
        url, questions, clients=20, total=200, time_limit_s=TIME_LIMIT_S, feedback_db=db
    )
    report(result, "loadtest-real-chain")
    assert_clean(result)
