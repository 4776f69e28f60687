"""The HTTP host with FastAPI's test client: validation, rate limit, CORS, frame headers, health."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from app.cli.serve import serve as serve_command
from app.feedback import FeedbackStore
from app.web.api import ManagedService, RateLimiter, ServiceUnavailable, create_app, frame_ancestors
from app.web.server import background_server, build_server
from indexer.errors import MyoQAError
from indexer.settings import Settings
from tests.fixtures.fake_chain import FakeChain, mda5_answer, two_source_answer
from tests.fixtures.live import chat_settings

COURSE = "https://course.example.edu"


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "feedback.sqlite3")


def make_client(
    chain: Any, store: FeedbackStore, tmp_path: Path, ui: bool = False, **server: Any
) -> TestClient:
    settings = chat_settings(tmp_path, server=server)
    return TestClient(create_app(chain, settings, store, ui=ui))


@pytest.fixture
def client(chain: FakeChain, store: FeedbackStore, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(chain, store, tmp_path, allowed_origins=[COURSE]) as test_client:
        yield test_client


# --- /api/ask -------------------------------------------------------------------------------


def test_ask_returns_exactly_the_answer_contract(client: TestClient, chain: FakeChain) -> None:
    response = client.post("/api/ask", json={"question": "Tell me about IBM"})
    assert response.status_code == 200
    body = response.json()
    assert body == two_source_answer().contract()
    assert set(body) == {"answer", "citations", "abstained", "reason"}
    assert chain.calls[-1].history == [] and not chain.calls[-1].streamed


def test_ask_passes_the_history(client: TestClient, chain: FakeChain) -> None:
    history = [
        {"role": "user", "content": "Which antibody goes with RP-ILD?"},
        {"role": "assistant", "content": "Anti-MDA5 [1]."},
    ]
    response = client.post("/api/ask", json={"question": "And its treatment?", "history": history})
    assert response.status_code == 200
    assert chain.calls[-1].history == history


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"question": ""}, 400, "Please type a question."),
        ({"question": "   \n"}, 400, "Please type a question."),
        ({"question": "x" * 1001}, 400, "1001 characters long; the limit is 1000"),
        ({}, 422, "Malformed request"),
        ({"question": 42}, 422, "Malformed request"),
        ({"question": "ok", "extra": 1}, 422, "Malformed request"),
        ({"question": "ok", "history": "nope"}, 422, "Malformed request"),
        ({"question": "ok", "history": [{"role": "system", "content": "x"}]}, 422, "Malformed"),
        ({"question": "ok", "history": [{"role": "user"}]}, 422, "Malformed request"),
        (["question"], 422, "Malformed request"),
    ],
)
def test_ask_rejects_bad_requests_with_json(
    client: TestClient, chain: FakeChain, body: Any, status: int, message: str
) -> None:
    response = client.post("/api/ask", json=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["error"]
    assert chain.calls == []


def test_ask_validation_errors_say_where(client: TestClient) -> None:
    detail = client.post("/api/ask", json={"question": 42}).json()["detail"]
    assert detail[0]["loc"] == ["question"]


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"", 400, "body is empty"),
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
    ],
)
def test_ask_rejects_unparseable_bodies(
    client: TestClient, content: bytes, status: int, message: str
) -> None:
    response = client.post(
        "/api/ask", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert message in response.json()["error"]


def test_ask_rejects_huge_bodies(chain: FakeChain, store: FeedbackStore, tmp_path: Path) -> None:
    with make_client(chain, store, tmp_path, max_request_bytes=2048) as small:
        history = [{"role": "user", "content": "x" * 1000}] * 3
        response = small.post("/api/ask", json={"question": "q", "history": history})
        assert response.status_code == 413
        assert "over 2048 bytes" in response.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b'{"question": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        streamed = small.post("/api/ask", content=chunks())
        assert streamed.status_code == 413


def test_chain_user_error_is_400_and_crash_is_500(client: TestClient, chain: FakeChain) -> None:
    chain.fail_with = MyoQAError("The question mentions nothing I can search for.")
    response = client.post("/api/ask", json={"question": "hm"})
    assert response.status_code == 400
    assert response.json() == {"error": "The question mentions nothing I can search for."}
    chain.fail_with = RuntimeError("boom")
    crashed = client.post("/api/ask", json={"question": "hm"})
    assert crashed.status_code == 500
    assert crashed.json() == {"error": "Answering failed; the error was logged."}
    assert "boom" not in crashed.text


# --- rate limit -----------------------------------------------------------------------------


def test_rate_limit_answers_429_with_json(
    chain: FakeChain, store: FeedbackStore, tmp_path: Path
) -> None:
    with make_client(chain, store, tmp_path, rate_limit_per_minute=3) as limited:
        statuses = [
            limited.post("/api/ask", json={"question": f"q{i}"}).status_code for i in range(3)
        ]
        assert statuses == [200, 200, 200]
        refused = limited.post("/api/ask", json={"question": "one too many"})
        assert refused.status_code == 429
        assert "limit is 3 per minute per client" in refused.json()["error"]
        assert 1 <= int(refused.headers["retry-after"]) <= 21
        assert (  # votes have a bucket of their own (issue 14)
            limited.post(
                "/api/feedback", json={"question": "q", "answer": "a", "rating": "up"}
            ).status_code
            == 201
        )
        assert len(chain.calls) == 3
        assert limited.get("/healthz").status_code == 200  # health checks are not limited


def test_rate_limit_is_per_client_and_refills() -> None:
    now = [1000.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert limiter.check("a") is None and limiter.check("a") is None
    wait = limiter.check("a")
    assert wait == pytest.approx(30.0)
    assert limiter.check("b") is None  # another client has its own bucket
    now[0] += 30.0
    assert limiter.check("a") is None
    assert limiter.check("a") is not None
    now[0] += 3600
    assert limiter.check("a") is None and limiter.check("a") is None  # refills up to the burst only
    assert limiter.check("a") is not None


def test_rate_limiter_forgets_old_clients() -> None:
    limiter = RateLimiter(per_minute=1, clock=lambda: 0.0, max_clients=3)
    for name in "abcd":
        assert limiter.check(name) is None
    assert limiter.check("a") is None  # "a" was evicted, so it starts with a full bucket
    assert limiter.check("d") is not None


def test_rate_limit_uses_forwarded_client_from_trusted_proxy(tmp_path: Path) -> None:
    """Behind the default trusted proxy (127.0.0.1), X-Forwarded-For names the client."""
    import httpx

    settings = chat_settings(tmp_path, server={"rate_limit_per_minute": 1})
    app, _ = build_server(settings, FakeChain())
    with background_server(app, settings) as url, httpx.Client(base_url=url) as http:

        def ask(ip: str) -> int:
            return http.post(
                "/api/ask", json={"question": "q"}, headers={"X-Forwarded-For": ip}
            ).status_code

        assert [ask("10.0.0.1"), ask("10.0.0.2"), ask("10.0.0.1")] == [200, 200, 429]


# --- CORS and frame-ancestors ----------------------------------------------------------------


def test_cors_allows_only_configured_origins(client: TestClient) -> None:
    preflight = client.options(
        "/api/ask",
        headers={
            "Origin": COURSE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == COURSE
    simple = client.post("/api/ask", json={"question": "q"}, headers={"Origin": COURSE})
    assert simple.headers["access-control-allow-origin"] == COURSE

    evil = client.options(
        "/api/ask",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in evil.headers
    evil_post = client.post(
        "/api/ask", json={"question": "q"}, headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in evil_post.headers


def test_no_cross_origin_by_default(chain: FakeChain, store: FeedbackStore, tmp_path: Path) -> None:
    with make_client(chain, store, tmp_path, ui=True) as default:
        for path in ("/api/ask", "/gradio_api/info", "/"):
            response = default.options(
                path, headers={"Origin": COURSE, "Access-Control-Request-Method": "POST"}
            )
            assert "access-control-allow-origin" not in response.headers, path
        page = default.get("/", headers={"Origin": "http://localhost:9999"})
        assert page.headers.get("access-control-allow-origin") is None
        csp = page.headers["content-security-policy"]
        assert csp.split("; ")[0] == "frame-ancestors 'self'"


def test_frame_ancestors_on_every_response(
    chain: FakeChain, store: FeedbackStore, tmp_path: Path
) -> None:
    with make_client(chain, store, tmp_path, ui=True, allowed_origins=[COURSE + "/"]) as app:
        for method, path in [
            ("get", "/"),
            ("get", "/healthz"),
            ("post", "/api/ask"),
            ("get", "/gradio_api/info"),
            ("get", "/gradio.js"),
        ]:
            response = getattr(app, method)(
                path, **({"json": {"question": "q"}} if method == "post" else {})
            )
            assert (
                response.headers["content-security-policy"].split("; ")[0]
                == f"frame-ancestors 'self' {COURSE}"
            ), path
            assert response.headers["x-content-type-options"] == "nosniff"
        assert app.get("/").headers["content-type"].startswith("text/html")


def test_frame_ancestors_setting_overrides_origins(tmp_path: Path) -> None:
    settings = chat_settings(
        tmp_path,
        server={"allowed_origins": [COURSE], "frame_ancestors": ["https://lms.example.org"]},
    )
    assert frame_ancestors(settings) == "frame-ancestors 'self' https://lms.example.org"
    assert (
        frame_ancestors(chat_settings(tmp_path, server={"frame_ancestors": ["*"]}))
        == "frame-ancestors *"
    )


@pytest.mark.parametrize(
    "origin",
    ["course.example.edu", "https://a.edu/path", "https://a.edu; script-src *", "ftp://a.edu"],
)
def test_origins_are_validated(origin: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        Settings(server={"allowed_origins": [origin]})


# --- /healthz and loading ------------------------------------------------------------------------


def test_healthz_when_ready(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["index_loaded"] is True and body["model_loaded"] is True and body["n_chunks"] == 3
    assert body["mode"] == "extractive" and body["error"] is None


def test_healthz_and_ask_while_the_chain_fails_to_load(
    store: FeedbackStore, tmp_path: Path
) -> None:
    def loader() -> Any:
        raise MyoQAError("No index at index/. Run `myositis-qa index` first.")

    managed = ManagedService(loader, wait_timeout_s=1)
    with TestClient(create_app(managed, chat_settings(tmp_path), store, ui=False)) as failing:
        response = failing.post("/api/ask", json={"question": "q"})
        assert response.status_code == 503
        assert "No index at index/" in response.json()["error"]
        health = failing.get("/healthz")
        assert health.status_code == 503
        assert health.json()["index_loaded"] is False and "No index" in health.json()["error"]


def test_healthz_while_loading(store: FeedbackStore, tmp_path: Path) -> None:
    release = threading.Event()

    def loader() -> Any:
        release.wait(10)
        return FakeChain()

    managed = ManagedService(loader, wait_timeout_s=0.05)
    managed.start_loading()
    with TestClient(create_app(managed, chat_settings(tmp_path), store, ui=False)) as loading:
        body = loading.get("/healthz").json()
        assert body["loading"] is True and body["index_loaded"] is False
        busy = loading.post("/api/ask", json={"question": "q"})
        assert busy.status_code == 503 and "still loading" in busy.json()["error"]
        release.set()
        for _ in range(200):
            if loading.get("/healthz").status_code == 200:
                break
            time.sleep(0.02)
        assert loading.post("/api/ask", json={"question": "q"}).status_code == 200


def test_healthz_starts_a_lazy_service_loading(store: FeedbackStore, tmp_path: Path) -> None:
    loads: list[int] = []

    def loader() -> Any:
        loads.append(1)
        return FakeChain()

    managed = ManagedService(loader)
    with TestClient(create_app(managed, chat_settings(tmp_path), store, ui=False)) as lazy:
        for _ in range(200):
            if lazy.get("/healthz").status_code == 200:
                break
            time.sleep(0.02)
        assert lazy.get("/healthz").json()["n_chunks"] == 3
    assert loads == [1]


def test_managed_service_bounds_concurrency() -> None:
    active, peak = [0], [0]
    lock = threading.Lock()

    class Counting(FakeChain):
        def ask(self, question: str, history: Any = None) -> Any:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            with lock:
                active[0] -= 1
            return super().ask(question, history)

    managed = ManagedService.ready(Counting(), max_concurrent=2, wait_timeout_s=30)
    threads = [threading.Thread(target=managed.ask, args=("q",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2


def test_managed_service_busy_is_unavailable() -> None:
    gate = threading.Event()

    class Slow(FakeChain):
        def ask(self, question: str, history: Any = None) -> Any:
            gate.wait(10)
            return super().ask(question, history)

    managed = ManagedService.ready(Slow(), max_concurrent=1, wait_timeout_s=0.05)
    worker = threading.Thread(target=managed.ask, args=("q",))
    worker.start()
    time.sleep(0.05)
    with pytest.raises(ServiceUnavailable, match="busy"):
        managed.ask("q2")
    gate.set()
    worker.join()
    assert managed.ask("q3") == mda5_answer()
    # a stream releases its slot when closed early
    stream = managed.stream("q4")
    next(stream)
    stream.close()
    assert managed.ask("q5") == mda5_answer()


def test_chain_loads_lazily_once(store: FeedbackStore, tmp_path: Path) -> None:
    calls = []

    def loader() -> Any:
        calls.append(1)
        return FakeChain()

    managed = ManagedService(loader)
    create_app(managed, chat_settings(tmp_path), store, ui=True)
    assert calls == []  # building the app (and the UI) loads nothing
    managed.ask("q")
    managed.ask("q")
    assert calls == [1]


# --- /api/feedback ----------------------------------------------------------------------------


def test_feedback_endpoint_stores_a_row(client: TestClient, store: FeedbackStore) -> None:
    answer = client.post("/api/ask", json={"question": "mda5?"}).json()
    vote = {
        "question": "mda5?",
        "answer": answer["answer"],
        "citations": answer["citations"],
        "rating": "down",
        "comment": "too short",
    }
    response = client.post("/api/feedback", json=vote)
    assert response.status_code == 201
    (row,) = store.rows()
    assert row.id == response.json()["id"]
    assert (row.question, row.rating, row.comment, row.channel) == (
        "mda5?",
        "down",
        "too short",
        "api",
    )
    assert row.citations == answer["citations"]


@pytest.mark.parametrize(
    "vote",
    [
        {"question": "q", "answer": "a", "rating": "meh"},
        {"question": "", "answer": "a", "rating": "up"},
        {"question": "q", "answer": "a", "rating": "up", "comment": "x" * 2001},
        {"question": "q", "rating": "up"},
    ],
)
def test_feedback_endpoint_rejects_bad_votes(
    client: TestClient, store: FeedbackStore, vote: dict[str, Any]
) -> None:
    response = client.post("/api/feedback", json=vote)
    assert response.status_code == 422
    assert response.json()["error"] == "Malformed feedback."
    assert store.count() == 0


# --- the mounted chat, web component and gradio_client ---------------------------------------


def test_chat_page_and_web_component_loader(
    chain: FakeChain, store: FeedbackStore, tmp_path: Path
) -> None:
    with make_client(chain, store, tmp_path, ui=True) as app:
        page = app.get("/")
        assert page.status_code == 200 and "<gradio-app" in page.text
        loader = app.get("/gradio.js")
        assert loader.status_code == 200
        assert loader.headers["content-type"].startswith("text/javascript")
        assert 'import("./assets/' in loader.text
        asset = loader.text.split('"./')[1].split('"')[0]
        assert app.get("/" + asset).status_code == 200
        docs = app.get("/api/openapi.json").json()
        assert {"/api/ask", "/api/feedback", "/healthz"} <= set(docs["paths"])


def test_gradio_client_can_call_ask(tmp_path: Path) -> None:
    """The README's Python snippet, against a live server."""
    from gradio_client import Client

    settings = chat_settings(tmp_path)
    chain = FakeChain()
    app, _ = build_server(settings, chain)
    with background_server(app, settings) as url:
        client = Client(url + "/", verbose=False)
        result = client.predict("Which antibody goes with RP-ILD?", api_name="/ask")
        assert result == mda5_answer().contract()
        history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"}]
        client.predict("And IBM?", history, api_name="/ask")
        assert chain.calls[-1].history == history
        assert json.loads(json.dumps(result))["citations"][0]["pmid"] == "33774723"


# --- `myositis-qa serve` -----------------------------------------------------------------------


def test_serve_command_applies_flags_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Settings] = []
    monkeypatch.delenv("MYOQA_PATHS__INDEX_DIR")  # the environment would win over the file
    monkeypatch.setenv("MYOQA_CONFIG_FILE", "")  # --config sets it; undone after the test
    monkeypatch.setattr("app.web.server.serve", lambda settings: seen.append(settings))
    config = tmp_path / "course.json"
    config.write_text(
        json.dumps(
            {
                "course": {"title": "Rheumatology block 3", "examples": ["What is IMNM?"]},
                "paths": {"index_dir": str(tmp_path / "course-index")},
                "server": {"allowed_origins": [COURSE], "port": 8100},
            }
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        serve_command, ["--config", str(config), "--host", "0.0.0.0", "--port", "9000"]
    )
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.server.host == "0.0.0.0" and settings.server.port == 9000
    assert settings.server.allowed_origins == [COURSE]
    assert settings.course.title == "Rheumatology block 3"
    assert settings.paths.index_dir == tmp_path / "course-index"


def test_serve_command_reports_bad_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYOQA_CONFIG_FILE", "")
    config = tmp_path / "bad.json"
    config.write_text(
        json.dumps({"server": {"allowed_origins": ["course.example.edu"]}}), encoding="utf-8"
    )
    result = CliRunner().invoke(serve_command, ["--config", str(config)])
    assert result.exit_code == 1
    assert "is not an origin" in result.output
    assert "Traceback" not in result.output
