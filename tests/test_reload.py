"""A running server sees a rebuilt index (issue 12 item 4, issue 14 item 10).

The server loads the new index beside the old and swaps the service in one step, so
no request fails; a damaged or mismatched new index is refused and the old one keeps
serving; a server that started on a broken index answers once it is repaired;
``/healthz`` reports the index build time and number of passages. The last test
does it in a real Chromium with the real model: index a new document while the chat
is open, then ask about it and see it cited.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.qa.policy import REFUSAL
from app.web.api import ManagedService
from app.web.server import IndexWatcher, background_server, build_server
from indexer.build import build_index
from indexer.embeddings import EmbeddingModel
from indexer.settings import Settings
from indexer.store import MANIFEST_FILE, VECTORS_FILE, current_version
from tests.conftest import make_settings
from tests.fixtures.live import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, chromium_missing_reason

#: A new source, written from fact 47 of the team's fact sheet.
HMGCR_DOC = """# Anti-HMGCR immune-mediated necrotising myopathy

## Statins

Anti-HMGCR myopathy is often preceded by statin exposure.
HMGCR is the rate-limiting enzyme of cholesterol synthesis and the drug target of statins.
IVIG may work even as monotherapy in anti-HMGCR myopathy.
"""
HMGCR_ROW = "hmgcr,hmgcr.md,Statin-associated autoimmune myopathy,Tiniakou E.,Ther Clin Risk Manag 2020,2020,10.2147/TCRM.S197941,\n"
HMGCR_QUESTION = "Which drug exposure often precedes anti-HMGCR myopathy?"
IVIG_QUESTION = "How many adults did the ProDERM trial randomise?"


def add_hmgcr(settings: Settings) -> None:
    corpus = settings.paths.corpus_dir
    (corpus / "hmgcr.md").write_text(HMGCR_DOC, encoding="utf-8")
    with settings.paths.manifest.open("a", encoding="utf-8") as handle:
        handle.write(HMGCR_ROW)


def served_settings(settings: Settings, **server: Any) -> Settings:
    return settings.model_copy(
        update={
            "server": settings.server.model_copy(
                update={"rate_limit_per_minute": 100_000, **server}
            )
        }
    )


def watcher_of(app: Any) -> IndexWatcher:
    watcher = app.state.index_watcher
    assert isinstance(watcher, IndexWatcher)
    return watcher


def cited(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["source_id"] for c in response.json()["citations"]]


pytestmark = pytest.mark.slow  # answers need the real embedding model


@pytest.fixture
def settings(tiny_corpus: Path, tmp_path: Path, real_model: EmbeddingModel) -> Settings:
    built = make_settings(tiny_corpus, tmp_path / "index")
    build_index(built, real_model, progress=False)
    return served_settings(built, reload_interval_s=0)


def test_healthz_reports_build_time_and_passages(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    app, managed = build_server(settings, model=real_model)
    managed.load()
    with TestClient(app) as client:
        body = client.get("/healthz").json()
    index = current_version(settings.paths.index_dir)
    assert index is not None
    manifest = json.loads((index / MANIFEST_FILE).read_text())
    assert body["index_built_at"] == manifest["built_at"]
    assert body["n_chunks"] == manifest["n_chunks"] > 0


def test_rebuilt_index_is_served_without_a_restart_or_a_failed_request(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    app, managed = build_server(settings, model=real_model)
    managed.load()
    watcher = watcher_of(app)
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(app) as client:
        before = client.get("/healthz").json()
        assert "hmgcr" not in cited(client.post("/api/ask", json={"question": HMGCR_QUESTION}))

        def keep_asking() -> None:
            while not stop.is_set():
                statuses.append(
                    client.post("/api/ask", json={"question": IVIG_QUESTION}).status_code
                )

        asking = threading.Thread(target=keep_asking)
        asking.start()
        try:
            add_hmgcr(settings)
            build_index(settings, real_model, progress=False)  # what `myositis-qa index` runs
            assert watcher.check_once() is True
            time.sleep(0.3)  # some requests on the new index too
        finally:
            stop.set()
            asking.join()
        assert len(statuses) > 1 and set(statuses) == {200}
        after = client.get("/healthz").json()
        assert after["n_chunks"] > before["n_chunks"]
        assert after["index_built_at"] >= before["index_built_at"]
        assert "hmgcr" in cited(client.post("/api/ask", json={"question": HMGCR_QUESTION}))
        assert watcher.check_once() is False  # nothing new: nothing reloaded
    assert watcher.reloads == 1


def test_a_damaged_rebuild_is_refused_and_the_old_index_keeps_serving(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    app, managed = build_server(settings, model=real_model)
    managed.load()
    watcher = watcher_of(app)
    with TestClient(app) as client:
        before = client.get("/healthz").json()
        add_hmgcr(settings)
        build_index(settings, real_model, progress=False)
        version = current_version(settings.paths.index_dir)
        assert version is not None
        vectors = version / VECTORS_FILE
        data = bytearray(vectors.read_bytes())
        data[-5] ^= 0x40
        vectors.write_bytes(bytes(data))  # the new index is damaged before the server looks

        assert watcher.check_once() is False
        assert watcher.refused == 1
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == before  # still the old one
        assert cited(client.post("/api/ask", json={"question": IVIG_QUESTION})) != []
        assert watcher.check_once() is False and watcher.refused == 1  # not retried in a loop

        build_index(settings, real_model, progress=False)  # the educator re-runs `index`
        assert watcher.check_once() is True
        assert "hmgcr" in cited(client.post("/api/ask", json={"question": HMGCR_QUESTION}))


def test_an_index_built_with_other_settings_is_refused_while_serving(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    app, managed = build_server(settings, model=real_model)
    managed.load()
    other = settings.model_copy(
        update={"chunking": settings.chunking.model_copy(update={"max_tokens": 60})}
    )
    build_index(other, real_model, progress=False)
    watcher = watcher_of(app)
    assert watcher.check_once() is False and watcher.refused == 1
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert cited(client.post("/api/ask", json={"question": IVIG_QUESTION})) != []


def test_a_server_started_on_a_broken_index_recovers_once_it_is_repaired(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    version = current_version(settings.paths.index_dir)
    assert version is not None
    manifest = version / MANIFEST_FILE
    data = json.loads(manifest.read_text())
    data["sources"].pop("ibm")
    manifest.write_text(json.dumps(data))  # broken: chunks cite a source it lacks

    app, managed = build_server(settings, model=real_model)
    managed.load()
    watcher = watcher_of(app)
    with TestClient(app) as client:
        health = client.get("/healthz")
        assert health.status_code == 503 and "does not list" in health.json()["error"]
        assert client.post("/api/ask", json={"question": IVIG_QUESTION}).status_code == 503
        assert watcher.check_once() is False  # nothing changed yet

        build_index(settings, real_model, progress=False)  # repaired by a plain `index`
        assert watcher.check_once() is True
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["error"] is None
        assert cited(client.post("/api/ask", json={"question": IVIG_QUESTION})) != []


def test_the_watcher_thread_picks_up_a_rebuild(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    settings = served_settings(settings, reload_interval_s=0.05)
    app, managed = build_server(settings, model=real_model)
    managed.load()
    watcher = watcher_of(app)
    assert watcher.start() is not None
    try:
        add_hmgcr(settings)
        build_index(settings, real_model, progress=False)
        for _ in range(200):
            if watcher.reloads:
                break
            time.sleep(0.05)
        assert watcher.reloads == 1
    finally:
        watcher.stop()


def test_no_watcher_for_a_ready_service_and_none_started_when_disabled(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    from tests.fixtures.fake_chain import FakeChain

    app, _ = build_server(settings, FakeChain())
    assert app.state.index_watcher is None
    app, _ = build_server(settings, model=real_model)
    assert watcher_of(app).start() is None  # reload_interval_s = 0


def test_the_watcher_waits_for_the_first_load(
    settings: Settings, real_model: EmbeddingModel
) -> None:
    release = threading.Event()
    calls: list[object] = []

    def slow_loader() -> Any:
        release.wait(10)
        raise RuntimeError("not used")

    managed = ManagedService(slow_loader)
    managed.start_loading()
    watcher = IndexWatcher(settings, managed, reload=lambda current: calls.append(current))  # type: ignore[arg-type,return-value]
    add_hmgcr(settings)
    build_index(settings, real_model, progress=False)
    assert watcher.check_once() is False and calls == []
    release.set()


# --- in the browser, with the real model --------------------------------------------------------


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 1400})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        yield tab
        browser.close()


def ask_in_chat(page: Any, question: str, answers_before: int) -> Any:
    page.locator("#myoqa-question textarea").fill(question)
    page.locator("#myoqa-ask").click()
    answers = page.locator(".myoqa-answer:not(.myoqa-pending)")
    answers.nth(answers_before).wait_for()
    return answers.nth(answers_before)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(chromium_missing_reason() is not None, reason=chromium_missing_reason() or "")
def test_a_document_indexed_while_the_chat_is_open_is_cited(
    tiny_corpus: Path, tmp_path: Path, real_model: EmbeddingModel, page: Any
) -> None:
    settings = make_settings(
        tiny_corpus,
        tmp_path / "index",
        server={"host": "127.0.0.1", "reload_interval_s": 0.2},
        paths={"feedback_db": tmp_path / "fb.sqlite3"},
    )
    build_index(settings, real_model, progress=False)
    app, managed = build_server(settings, model=real_model)
    managed.load()
    watcher = watcher_of(app)
    watcher.start()
    try:
        with background_server(app, settings) as url:
            page.goto(url + "/")
            page.wait_for_selector("#myoqa-question textarea")
            first = ask_in_chat(page, HMGCR_QUESTION, 0)
            assert REFUSAL in first.inner_text()  # nothing indexed about it yet

            add_hmgcr(settings)  # the educator adds a document and runs `index`
            build_index(settings, real_model, progress=False)
            for _ in range(300):
                if watcher.reloads:
                    break
                time.sleep(0.05)
            assert watcher.reloads == 1

            second = ask_in_chat(page, HMGCR_QUESTION, 1)  # the same open page, no reload
            assert "statin" in second.locator(".myoqa-text").inner_text().lower()
            second.locator("sup.myoqa-cite a").first.click()
            opened = second.locator("details.myoqa-source[open]").first
            opened.locator("blockquote.myoqa-passage").wait_for()
            assert "Statin-associated autoimmune myopathy" in opened.locator("summary").inner_text()
            assert (
                opened.locator(".myoqa-links a").first.get_attribute("href")
                == "https://doi.org/10.2147/TCRM.S197941"
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "reload-new-document-cited.png"), full_page=True)
            health = httpx.get(url + "/healthz").json()
            assert health["n_chunks"] == len(
                [c for c in managed.get().index.chunks]  # type: ignore[attr-defined]
            )
    finally:
        watcher.stop()
