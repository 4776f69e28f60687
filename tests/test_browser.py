"""The served chat in a real headless Chromium (Debian's, driven by Playwright).

A loopback server runs the fake chain; a second loopback "course site" embeds the
chat as an iframe and as the <gradio-app> web component, on an allowed origin and
on one that is not. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from app.feedback import FeedbackStore
from app.web.server import background_server, build_server
from indexer.store import index_exists
from tests.fixtures.fake_chain import (
    MDA5_SENTENCE,
    XSS_IMG,
    XSS_SCRIPT,
    XSS_SENTENCE,
    FakeChain,
)
from tests.fixtures.live import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    chat_settings,
    chromium_missing_reason,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        chromium_missing_reason() is not None, reason=chromium_missing_reason() or ""
    ),
]

TIMEOUT_MS = 30_000
ROOT = Path(__file__).resolve().parents[1]


def course_site() -> FastAPI:
    """A stand-in for an educator's course page that embeds the chat at ``?src=``."""
    site = FastAPI()

    @site.get("/iframe")
    def iframe(src: str) -> HTMLResponse:
        return HTMLResponse(
            "<!doctype html><html><body><h1>Course: myositis week</h1>"
            f'<iframe id="chat" src="{html.escape(src, quote=True)}" width="1000" height="1100" '
            'style="border:0" title="Myositis Q&amp;A"></iframe></body></html>'
        )

    @site.get("/component")
    def component(src: str) -> HTMLResponse:
        base = html.escape(src.rstrip("/"), quote=True)
        return HTMLResponse(
            "<!doctype html><html><head>"
            f'<script type="module" src="{base}/gradio.js"></script></head>'
            "<body><h1>Course: myositis week</h1>"
            f'<gradio-app src="{base}/"></gradio-app></body></html>'
        )

    @site.get("/attack")
    def attack(target: str) -> HTMLResponse:
        """A hostile page: posts a vote with a text/plain form and a no-cors fetch."""
        base = json.dumps(target.rstrip("/") + "/api/feedback")
        field = html.escape('{"question":"q","answer":"a","rating":"up","comment":"x', quote=True)
        return HTMLResponse(
            "<!doctype html><html><body><h1>Win a prize</h1>"
            '<iframe name="sink" id="sink"></iframe>'
            f'<form id="f" method="POST" enctype="text/plain" target="sink" action={base}>'
            f'<input type="hidden" name="{field}" value=\'y"}}\'></form>'
            "<script>"
            "window.__done = false; let pending = 2;"
            "const settle = () => { if (--pending === 0) { window.__done = true; } };"
            "document.getElementById('sink').addEventListener('load', settle, {once: true});"
            "document.getElementById('f').submit();"
            f"fetch({base}, {{method: 'POST', mode: 'no-cors', "
            "headers: {'Content-Type': 'text/plain'}, "
            "body: JSON.stringify({question: 'q', answer: 'a', rating: 'down'})})"
            ".then(settle, settle);"
            "</script></body></html>"
        )

    @site.get("/vote")
    def vote(target: str) -> HTMLResponse:
        """An allowed course page: votes with a JSON fetch (CORS preflight included)."""
        base = json.dumps(target.rstrip("/") + "/api/feedback")
        return HTMLResponse(
            "<!doctype html><html><body><script>"
            f"fetch({base}, {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, "
            "body: JSON.stringify({question: 'from the course page', answer: 'a', rating: 'up'})})"
            ".then((r) => { window.__status = r.status; }, () => { window.__status = -1; });"
            "</script></body></html>"
        )

    return site


@pytest.fixture(scope="module")
def course_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = chat_settings(tmp_path_factory.mktemp("course"))
    with background_server(course_site(), settings) as url:
        yield url


@pytest.fixture(scope="module")
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, chain: FakeChain, course_url: str
) -> Iterator[tuple[str, FeedbackStore]]:
    """The chat with the fake chain; the course site's 127.0.0.1 origin may embed it."""
    tmp = tmp_path_factory.mktemp("chat")
    settings = chat_settings(tmp, server={"allowed_origins": [course_url]})
    app, _ = build_server(settings, chain)
    with background_server(app, settings) as url:
        yield url, FeedbackStore(settings.paths.feedback_db)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.dialogs = []  # every alert/confirm/prompt that fires

    def on_dialog(dialog: Any) -> None:
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page
    context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def open_chat(page: Any, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#myoqa-question textarea")


def ask(scope: Any, question: str, answers_before: int = 0) -> Any:
    """Type, press Ask, wait for the new answer's sources; returns that answer."""
    scope.locator("#myoqa-question textarea").fill(question)
    scope.locator("#myoqa-ask").click()
    answers = scope.locator(".myoqa-answer:not(.myoqa-pending)")
    answers.nth(answers_before).wait_for()
    return answers.nth(answers_before)


def test_ask_see_cited_answer_and_open_the_source(
    page: Any, served: tuple[str, FeedbackStore]
) -> None:
    url, _ = served
    open_chat(page, url)
    assert "For education only" in page.locator(".myoqa-disclaimer").inner_text()
    page.get_by_text("Answer mode: extractive").wait_for()
    page.get_by_text("How is inclusion body myositis managed?").first.wait_for()  # examples

    answer = ask(page, "Which antibody goes with rapidly progressive ILD?")
    assert MDA5_SENTENCE in answer.locator(".myoqa-text").inner_text()
    marker = answer.locator("sup.myoqa-cite a").first
    assert marker.inner_text() == "[1]"
    source = answer.locator("details.myoqa-source").first
    assert source.get_attribute("open") is None
    passage = source.locator("blockquote.myoqa-passage")
    assert not passage.is_visible()

    marker.click()
    page.wait_for_function("document.querySelector('details.myoqa-source').open === true")
    assert passage.is_visible()
    assert source.locator("mark.myoqa-hl").inner_text() == MDA5_SENTENCE
    assert "Anti-MDA5 dermatomyositis" in source.locator("summary").inner_text()
    links = source.locator(".myoqa-links a")
    assert links.nth(0).get_attribute("href") == "https://doi.org/10.1007/s00296-021-04819-1"
    assert links.nth(1).get_attribute("href") == "https://pubmed.ncbi.nlm.nih.gov/33774723/"
    page.wait_for_timeout(400)  # let the smooth scroll settle for the picture
    shot = screenshot(page, "chat-answer-with-source.png")
    assert shot.stat().st_size > 10_000
    assert page.dialogs == []


def test_feedback_from_the_page_is_stored(page: Any, served: tuple[str, FeedbackStore]) -> None:
    url, store = served
    before = store.count()
    open_chat(page, url)
    ask(page, "How is inclusion body myositis managed? (ibm)")
    page.locator("#myoqa-comment textarea").fill("Clear, and the passage matched.")
    page.locator("#myoqa-up").click()
    page.get_by_text("Thanks: your feedback was saved.").wait_for()
    assert page.locator("#myoqa-comment textarea").input_value() == ""

    page.locator("#myoqa-chat button[aria-label='Dislike']").last.click()
    for _ in range(100):
        if store.count() == before + 2:
            break
        time.sleep(0.05)
    new = store.rows()[before:]
    assert [(r.rating, r.comment, r.channel) for r in new] == [
        ("up", "Clear, and the passage matched.", "ui"),
        ("down", "", "ui"),
    ]
    assert new[0].question == "How is inclusion body myositis managed? (ibm)"
    assert [c["source_id"] for c in new[0].citations] == ["mda5", "ibm"]


def test_xss_in_a_document_runs_nothing(page: Any, served: tuple[str, FeedbackStore]) -> None:
    url, _ = served
    page.add_init_script(
        "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));"
    )
    open_chat(page, url)
    answer = ask(page, "Show me the xss review")
    answer.locator("sup.myoqa-cite a").first.click()
    source = answer.locator("details.myoqa-source").first
    page.wait_for_function("document.querySelector('details.myoqa-source').open === true")
    page.wait_for_timeout(500)  # give any injected handler time to fire

    # the markup is visible as text ...
    assert XSS_SCRIPT in source.locator(".myoqa-title").inner_text()
    assert XSS_IMG in source.locator("mark.myoqa-hl").inner_text()
    assert XSS_SENTENCE in answer.locator(".myoqa-text").inner_text()
    # ... and nothing ran or was injected
    assert page.dialogs == []
    assert page.evaluate("window.__alerts") == []
    assert (
        page.evaluate("document.querySelectorAll('img[src=\"x\"], img[onerror], [onerror]').length")
        == 0
    )
    assert answer.locator("script, img, iframe, object, embed").count() == 0
    assert (
        page.evaluate("[...document.scripts].filter(s => s.textContent.includes('alert(')).length")
        == 0
    )
    assert page.evaluate("[...document.querySelectorAll('a[href^=\"javascript:\"]')].length") == 0
    screenshot(page, "chat-xss-shown-as-text.png")


def test_follow_up_uses_the_conversation_and_new_chat_clears_it(
    page: Any, served: tuple[str, FeedbackStore], chain: FakeChain
) -> None:
    url, _ = served
    open_chat(page, url)
    ask(page, "Which antibody goes with RP-ILD?")
    second = ask(page, "And how is IBM treated?", answers_before=1)
    assert second.locator("details.myoqa-source").count() == 2
    assert chain.calls[-1].history == [
        {"role": "user", "content": "Which antibody goes with RP-ILD?"},
        {"role": "assistant", "content": f"{MDA5_SENTENCE} [1]"},
    ]
    # the second answer's [2] opens the second answer's own source
    second.locator("sup.myoqa-cite a").nth(1).click()
    page.wait_for_function("document.getElementById('myoqa-t1-c2').open === true")
    assert page.evaluate("document.getElementById('myoqa-t0-c1').open") is False

    page.locator("#myoqa-clear").click()
    page.wait_for_function("document.querySelectorAll('.myoqa-answer').length === 0")
    ask(page, "A fresh question")
    assert chain.calls[-1].history == []


def test_user_error_is_shown(page: Any, served: tuple[str, FeedbackStore]) -> None:
    url, _ = served
    open_chat(page, url)
    page.locator("#myoqa-ask").click()
    page.locator(".toast-body").filter(has_text="Please type a question.").wait_for()
    page.locator("#myoqa-question textarea").fill("x" * 1001)
    page.locator("#myoqa-ask").click()
    page.locator(".toast-body").filter(has_text="the limit is 1000").wait_for()


def test_iframe_embedding_on_an_allowed_course_site(
    page: Any, served: tuple[str, FeedbackStore], course_url: str
) -> None:
    url, _ = served
    page.goto(f"{course_url}/iframe?src={url}/")
    frame = page.frame_locator("#chat")
    frame.locator("#myoqa-question textarea").wait_for()
    answer = ask(frame, "Which antibody goes with RP-ILD?")
    answer.locator("sup.myoqa-cite a").first.click()
    frame.locator("details.myoqa-source[open] mark.myoqa-hl").wait_for()
    screenshot(page, "embedded-iframe.png")


def test_iframe_embedding_is_refused_elsewhere(
    page: Any, served: tuple[str, FeedbackStore], course_url: str
) -> None:
    url, _ = served
    # "localhost" is another origin than the allowed http://127.0.0.1:<port>
    other_origin = course_url.replace("127.0.0.1", "localhost")
    with page.expect_console_message(lambda message: "frame-ancestors" in message.text) as refused:
        page.goto(f"{other_origin}/iframe?src={url}/")
    assert "has been blocked" in refused.value.text
    frame = next(f for f in page.frames if f != page.main_frame)
    assert frame.locator("#myoqa-question").count() == 0
    page.goto(f"{course_url}/iframe?src={url}/")  # the same page on the allowed origin works
    page.frame_locator("#chat").locator("#myoqa-question textarea").wait_for()


def test_web_component_on_an_allowed_course_site(
    page: Any, served: tuple[str, FeedbackStore], course_url: str
) -> None:
    url, _ = served
    page.goto(f"{course_url}/component?src={url}/")
    page.locator("gradio-app #myoqa-question textarea").wait_for()
    answer = ask(page.locator("gradio-app"), "Which antibody goes with RP-ILD?")
    assert MDA5_SENTENCE in answer.inner_text()
    answer.locator("sup.myoqa-cite a").first.click()
    page.locator("gradio-app details.myoqa-source[open] mark.myoqa-hl").wait_for()
    screenshot(page, "embedded-web-component.png")


# --- the real chain --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The real chain: the repo's index/ when built, else the bundled corpus indexed for the session."""
    pytest.importorskip("app.qa.chain")
    tmp = tmp_path_factory.mktemp("real")
    if index_exists(ROOT / "index") and not os.environ.get("MYOQA_TEST_FRESH_INDEX"):
        index_dir = ROOT / "index"
    else:
        index_dir = request.getfixturevalue("bundled_index").paths.index_dir
    settings = chat_settings(tmp, paths={"index_dir": index_dir, "feedback_db": tmp / "fb.sqlite3"})
    app, managed = build_server(settings)
    managed.load()
    status = managed.status()
    if status["error"]:
        pytest.fail(f"The real chain did not load: {status['error']}")
    with background_server(app, settings) as url:
        yield url


@pytest.mark.slow
def test_real_chain_answer_with_citation(page: Any, real_served: str) -> None:
    open_chat(page, real_served)
    page.get_by_text("Answer mode: extractive").wait_for()
    answer = ask(page, "Which antibody goes with rapidly progressive ILD in dermatomyositis?")
    assert "MDA5" in answer.locator(".myoqa-text").inner_text()
    marker = answer.locator("sup.myoqa-cite a").first
    marker.click()
    opened = answer.locator("details.myoqa-source[open]").first
    opened.locator("blockquote.myoqa-passage").wait_for()
    assert opened.locator("mark.myoqa-hl").count() >= 1
    # the answer's sources link to the papers they name (DOI or PubMed), where the
    # bibliography has an identifier; not every reference on the fact sheet has one
    assert answer.locator(".myoqa-links a").count() >= 1
    page.wait_for_timeout(400)
    screenshot(page, "real-chain-answer.png")
    assert page.dialogs == []


# --- cross-site writes and the content security policy (issue 14) ------------------------------


def test_a_page_on_another_site_cannot_post_votes(
    page: Any, served: tuple[str, FeedbackStore], course_url: str
) -> None:
    url, store = served
    before = store.count()
    other_origin = course_url.replace("127.0.0.1", "localhost")  # not in allowed_origins
    page.goto(f"{other_origin}/attack?target={url}")
    page.wait_for_function("window.__done === true")
    page.wait_for_timeout(300)
    assert store.count() == before  # neither the form nor the no-cors fetch stored a vote
    # the same kind of page on the allowed course site votes with a JSON fetch
    page.goto(f"{course_url}/vote?target={url}")
    page.wait_for_function("window.__status !== undefined")
    assert page.evaluate("window.__status") == 201
    assert store.count() == before + 1
    assert store.rows()[-1].question == "from the course page"


def test_the_chat_runs_under_its_content_security_policy(
    page: Any, served: tuple[str, FeedbackStore]
) -> None:
    url, _ = served
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    response = page.goto(url + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    page.wait_for_selector("#myoqa-question textarea")
    answer = ask(page, "Which antibody goes with rapidly progressive ILD?")
    answer.locator("sup.myoqa-cite a").first.click()  # the js= hook still runs
    page.wait_for_function("document.querySelector('details.myoqa-source').open === true")
    # a script injected from another host is refused by the policy
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.src = 'http://localhost:9/x.js'; document.head.appendChild(s); }"
    )
    page.wait_for_timeout(300)
    assert any("localhost:9" in v for v in violations), violations
    assert [v for v in violations if "localhost:9" not in v] == []


# --- the classification calculator (issue 15) ----------------------------------------------


def open_calculator(page: Any) -> None:
    page.get_by_role("tab", name="Classification calculator").click()
    page.locator("#myoqa-calc-age input").wait_for()


@pytest.mark.slow
def test_calculator_tab_scores_a_case_and_shows_the_passages(page: Any, real_served: str) -> None:
    open_chat(page, real_served)
    open_calculator(page)
    assert (
        "not a diagnostic device" in page.locator("#myoqa-calc-tab .myoqa-disclaimer").inner_text()
    )
    page.locator("#myoqa-calc-age input").fill("45")
    page.locator("#myoqa-calc-skin").get_by_label("Gottron's sign").check()
    page.locator("#myoqa-calc-other").get_by_label(
        "Raised CK, LDH, AST or ALT (above the upper limit of normal)"
    ).check()
    page.locator("#myoqa-calc-go").click()
    result = page.locator("#myoqa-calc-result")
    result.wait_for()
    assert page.locator("#myoqa-calc-score").inner_text() == "6.7"
    assert page.locator("#myoqa-calc-category").inner_text() == "probable IIM"
    text = result.inner_text()
    assert "≥55% and <90%" in text and "0.8 points away" in text
    # each weight links to the passage that states it
    row = result.locator("tr", has_text="Gottron's sign")
    assert "3.3" in row.inner_text()
    row.locator("sup.myoqa-cite a").click()
    opened = result.locator("details.myoqa-source[open]")
    opened.wait_for()
    assert (
        "Gottron's sign scores 3.3 without muscle biopsy"
        in opened.locator("mark.myoqa-hl").inner_text()
    )
    # the weight is cited to the reference that reports it: the criteria's score table
    assert "EULAR/ACR criteria score table" in opened.inner_text()
    page.wait_for_timeout(400)
    screenshot(page, "calculator-result.png")

    # an invalid case is refused with a message, and the inputs stay
    page.locator("#myoqa-calc-age input").fill("15")
    page.locator("#myoqa-calc-go").click()
    page.locator(".toast-body").filter(has_text="out of range").wait_for()
    assert page.locator("#myoqa-calc-skin").get_by_label("Gottron's sign").is_checked()
    assert page.dialogs == []


@pytest.mark.slow
def test_chat_question_about_an_item_opens_the_calculator_filled_in(
    page: Any, real_served: str
) -> None:
    open_chat(page, real_served)
    page.get_by_text("Answer mode: extractive").wait_for()
    answer = ask(page, "How many points is Gottron's sign without a biopsy?")
    assert "3.3" in answer.locator(".myoqa-text").inner_text()  # the cited sentence stays
    option = page.get_by_role(
        "button",
        name="Open in the classification calculator: Gottron's sign, without muscle biopsy",
    )
    screenshot(page, "chat-calculator-option.png")
    option.click()
    page.locator("#myoqa-calc-result").wait_for()
    assert page.locator("#myoqa-calc-skin").get_by_label("Gottron's sign").is_checked()
    assert not page.locator("#myoqa-calc-muscle-biopsy input").is_checked()
    assert (
        "Gottron's sign scores 3.3 without muscle biopsy"
        in page.locator("#myoqa-calc-result").inner_text()
    )
    screenshot(page, "calculator-from-chat.png")
    # the conversation is still there
    page.get_by_role("tab", name="Chat").click()
    assert page.locator("#myoqa-chat .myoqa-answer:not(.myoqa-pending)").count() == 1
