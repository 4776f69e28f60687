"""The chat's rendering and handlers, called directly with the fake chain."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.feedback import FeedbackStore
from app.qa.policy import REFUSAL
from app.qa.schema import Answer, Citation
from app.web.api import RateLimiter
from app.web.ui import (
    ChatHandlers,
    build_app,
    doi_url,
    header_html,
    highlight_passage,
    history_from,
    link_markers,
    mode_label,
    pmc_url,
    pubmed_url,
    render_answer,
    render_chat,
    web_url,
)
from indexer.errors import MyoQAError
from tests.fixtures.fake_chain import (
    IBM_SENTENCE,
    MDA5_SENTENCE,
    XSS_IMG,
    XSS_SCRIPT,
    FakeChain,
    mda5_answer,
    two_source_answer,
    xss_answer,
    xss_citation,
)
from tests.fixtures.live import chat_settings

#: The only markup the renderer may produce.
ALLOWED_TAGS = {
    "div",
    "p",
    "sup",
    "a",
    "details",
    "summary",
    "span",
    "blockquote",
    "mark",
    "strong",
    "h1",
}
ALLOWED_ATTRS = {"class", "href", "title", "id", "target", "rel", "role", "open"}


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def parse(markup: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    collector = TagCollector()
    collector.feed(markup)
    collector.close()
    return collector.tags


def assert_only_our_markup(markup: str) -> None:
    for tag, attrs in parse(markup):
        assert tag in ALLOWED_TAGS, f"unexpected <{tag}> in {markup}"
        for name, value in attrs:
            assert name in ALLOWED_ATTRS, f"unexpected attribute {name} on <{tag}>"
            if name == "href":
                assert value is not None
                assert value.startswith(("https://", "#myoqa-")), value


@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "feedback.sqlite3", version="9.9.9")


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def handlers(chain: FakeChain, store: FeedbackStore, tmp_path: Path) -> ChatHandlers:
    return ChatHandlers(chain, chat_settings(tmp_path), store)


def run(
    handlers: ChatHandlers, question: str, turns: list[dict[str, Any]] | None = None
) -> list[Any]:
    return list(handlers.respond(question, turns or []))


# --- rendering ---------------------------------------------------------------------------


def test_markers_become_superscript_links_to_their_source() -> None:
    answer = two_source_answer()
    markup = render_answer(answer, turn=3)
    assert '<sup class="myoqa-cite"><a href="#myoqa-t3-c1"' in markup
    assert '<a href="#myoqa-t3-c2"' in markup
    assert '<details class="myoqa-source" id="myoqa-t3-c1">' in markup
    assert '<details class="myoqa-source" id="myoqa-t3-c2">' in markup
    assert "[1]" not in markup.replace(">[1]<", "")  # every marker is linked
    assert_only_our_markup(markup)


def test_marker_without_citation_stays_text_and_lists_link_each_number() -> None:
    citations = [xss_citation(1)]
    text = link_markers("A [1] B [7] C [1, 7] D", citations, turn=0)
    assert text.count('href="#myoqa-t0-c1"') == 1
    assert "[7]" in text and "[1, 7]" in text
    two = [xss_citation(1), xss_citation(2)]
    grouped = link_markers("A [1, 2].", two, turn=0)
    assert 'href="#myoqa-t0-c1"' in grouped and 'href="#myoqa-t0-c2"' in grouped


def test_sources_panel_shows_reference_links_and_highlighted_sentence() -> None:
    markup = render_answer(two_source_answer(), turn=0)
    for expected in (
        "Anti-MDA5 dermatomyositis",
        "Mehta P et al. Rheumatol Int 2021",
        "Section: Lung disease · p. 3–4",
        'href="https://doi.org/10.1007/s00296-021-04819-1"',
        'href="https://pubmed.ncbi.nlm.nih.gov/33774723/"',
        'href="https://pmc.ncbi.nlm.nih.gov/articles/PMC9552567/"',
        f'<mark class="myoqa-hl">{MDA5_SENTENCE}</mark>',
        f'<mark class="myoqa-hl">{IBM_SENTENCE}</mark>',
        "Section: Treatment",
    ):
        assert expected in markup, expected
    assert 'rel="noopener noreferrer"' in markup


def test_document_markup_is_escaped_everywhere() -> None:
    markup = render_answer(xss_answer(), turn=0)
    assert "<script" not in markup.lower()
    assert "<img" not in markup.lower()
    assert "<b>" not in markup
    assert "javascript:" not in markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert "&lt;img src=x onerror=alert(1)&gt;" in markup
    assert "onerror=alert(2)" not in markup.split("href=")[-1].split(">")[0]
    tags = parse(markup)
    assert all(tag != "img" and tag != "script" for tag, _ in tags)
    assert_only_our_markup(markup)
    # malformed identifiers are shown as text, never turned into links
    hrefs = [value for _, attrs in tags for name, value in attrs if name == "href"]
    assert hrefs == ["#myoqa-t0-c1"]


def test_user_question_is_escaped(handlers: ChatHandlers) -> None:
    chat, _, _ = run(handlers, f"xss {XSS_IMG} {XSS_SCRIPT}")[-1]
    assert "<img" not in chat[0]["content"] and "<script" not in chat[0]["content"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in chat[0]["content"]


@settings(max_examples=150, deadline=None)
@given(
    title=st.text(max_size=60),
    passage=st.text(min_size=1, max_size=200),
    answer=st.text(max_size=120),
    section=st.text(max_size=30),
    doi=st.text(max_size=30),
    url=st.text(max_size=40),
)
def test_any_document_text_renders_as_text(
    title: str, passage: str, answer: str, section: str, doi: str, url: str
) -> None:
    highlight = passage[: max(1, len(passage) // 2)]
    citation = Citation(
        n=1,
        source_id="s",
        title=title,
        doi=doi,
        url=url,
        section=section,
        chunk_id="c",
        passage=passage,
        highlights=[highlight, "<script>"],
    )
    markup = render_answer(Answer(answer=f"{answer} [1]", citations=[citation]), turn=0)
    assert_only_our_markup(markup)
    assert "\n\n" not in markup


def test_highlight_merges_overlaps_and_ignores_missing() -> None:
    passage = "Alpha beta <gamma>. Beta gamma delta."
    out = highlight_passage(passage, ["beta <gamma>", "<gamma>. Beta", "not there", ""])
    assert out == 'Alpha <mark class="myoqa-hl">beta &lt;gamma&gt;. Beta</mark> gamma delta.'
    assert highlight_passage("a  b\n\nc", []) == "a b c"


@pytest.mark.parametrize(
    ("func", "value", "expected"),
    [
        (doi_url, "10.1000/abc(1)", "https://doi.org/10.1000/abc(1)"),
        (doi_url, "https://doi.org/10.1000/x", "https://doi.org/10.1000/x"),
        (doi_url, "doi:10.1000/x", "https://doi.org/10.1000/x"),
        (doi_url, '10.1000/x"><img>', "https://doi.org/10.1000/x%22%3E%3Cimg%3E"),
        (doi_url, "not a doi", None),
        (pubmed_url, " 123 ", "https://pubmed.ncbi.nlm.nih.gov/123/"),
        (pubmed_url, "12a", None),
        (pmc_url, "pmc42", "https://pmc.ncbi.nlm.nih.gov/articles/PMC42/"),
        (pmc_url, "PMC1<script>", None),
        (web_url, "https://example.org/a?b=c", "https://example.org/a?b=c"),
        (web_url, "javascript:alert(1)", None),
        (web_url, "data:text/html,<script>", None),
        (web_url, "https://exa mple.org", None),
        (web_url, "//example.org", None),
    ],
)
def test_links_are_built_only_from_valid_identifiers(
    func: Any, value: str, expected: str | None
) -> None:
    assert func(value) == expected


def test_abstention_renders_without_sources() -> None:
    markup = render_answer(Answer(answer=REFUSAL, abstained=True, reason="out_of_scope"), turn=0)
    assert "myoqa-abstained" in markup
    assert "Sources" not in markup
    assert "I can&#x27;t answer that" in markup


def test_header_escapes_course_texts(tmp_path: Path) -> None:
    settings = chat_settings(
        tmp_path,
        course={"title": "<b>T</b>", "welcome": "Hi <i>", "disclaimer": "<script>x</script>"},
    )
    markup = header_html(settings)
    assert "&lt;b&gt;T&lt;/b&gt;" in markup and "<script>" not in markup
    assert_only_our_markup(markup)


def test_mode_label() -> None:
    assert mode_label({"mode": "extractive", "n_chunks": 1234}) == (
        "Answer mode: extractive (quotes the sources; cannot invent a fact) · 1,234 passages indexed"
    )
    assert "LLM (qwen2.5)" in mode_label({"mode": "llm:qwen2.5"})


# --- handlers ----------------------------------------------------------------------------


def test_respond_streams_then_shows_the_cited_answer(handlers: ChatHandlers) -> None:
    updates = run(handlers, "  Which antibody goes with RP-ILD?  ")
    assert len(updates) >= 3  # several pieces, then the final answer
    first_chat, first_turns, first_box = updates[0]
    assert first_turns == [] and first_box == ""
    assert "myoqa-pending" in first_chat[-1]["content"]
    chat, turns, box = updates[-1]
    assert box == ""
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert "Which antibody goes with RP-ILD?" in chat[0]["content"]
    assert 'href="#myoqa-t0-c1"' in chat[1]["content"] and "Sources" in chat[1]["content"]
    assert turns[0]["question"] == "Which antibody goes with RP-ILD?"
    assert turns[0]["answer"] == mda5_answer().contract()
    assert turns[0]["mode"] == "extractive"


def test_follow_up_questions_carry_the_conversation(
    handlers: ChatHandlers, chain: FakeChain
) -> None:
    _, turns, _ = run(handlers, "Which antibody goes with RP-ILD?")[-1]
    chat, turns, _ = run(handlers, "And how is IBM treated?", turns)[-1]
    assert chain.calls[0].history == []
    assert chain.calls[1].history == [
        {"role": "user", "content": "Which antibody goes with RP-ILD?"},
        {"role": "assistant", "content": mda5_answer().answer},
    ]
    assert chain.calls[1].streamed
    assert len(chat) == 4 and len(turns) == 2
    assert 'href="#myoqa-t1-c2"' in chat[3]["content"]  # ids are unique per turn
    assert render_chat(turns) == chat


def test_history_is_bounded() -> None:
    turns = [{"question": f"q{i}", "answer": {"answer": f"a{i}"}} for i in range(20)]
    history = history_from(turns)
    assert len(history) == 12 and history[-1] == {"role": "assistant", "content": "a19"}


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ("", "Please type a question."),
        ("   ", "Please type a question."),
        ("x" * 1001, "the limit is 1000"),
    ],
)
def test_user_errors_become_gr_error(handlers: ChatHandlers, question: str, message: str) -> None:
    with pytest.raises(gr.Error, match=message):
        run(handlers, question)


def test_failure_mid_stream_restores_the_chat_and_reports(
    handlers: ChatHandlers, chain: FakeChain
) -> None:
    _, turns, _ = run(handlers, "first")[-1]

    def broken(question: str, history: Any = None) -> Any:
        yield "partial"
        raise RuntimeError("index exploded")

    chain.stream = broken  # type: ignore[method-assign]
    generator = handlers.respond("second", turns)
    updates = []
    with pytest.raises(gr.Error, match="Answering failed"):
        for update in generator:
            updates.append(update)
    chat, kept, box = updates[-1]
    assert kept == turns and len(chat) == 2 and box == "second"


def test_abstention_is_shown_as_an_answer(handlers: ChatHandlers) -> None:
    chat, turns, _ = run(handlers, "Will it rain? weather")[-1]
    assert turns[0]["answer"]["abstained"] is True
    assert "myoqa-abstained" in chat[1]["content"]


def test_clear_resets_everything(handlers: ChatHandlers) -> None:
    assert handlers.clear() == ([], [], "", "", "")


def test_feedback_buttons_store_the_latest_answer(
    handlers: ChatHandlers, store: FeedbackStore
) -> None:
    _, turns, _ = run(handlers, "mda5?")[-1]
    _, turns, _ = run(handlers, "ibm?", turns)[-1]
    box, status = handlers.feedback("down", "  missing the dose  ", turns)
    assert box == "" and "saved" in status
    (row,) = store.rows()
    assert row.question == "ibm?"
    assert row.answer == two_source_answer().answer
    assert [c["source_id"] for c in row.citations] == ["mda5", "ibm"]
    assert row.rating == "down" and row.comment == "missing the dose"
    assert row.app_version == "9.9.9" and row.channel == "ui" and row.mode == "extractive"


def test_feedback_needs_an_answer_and_a_short_comment(handlers: ChatHandlers) -> None:
    with pytest.raises(gr.Error, match="Ask a question first"):
        handlers.feedback("up", "", [])
    _, turns, _ = run(handlers, "mda5?")[-1]
    with pytest.raises(gr.Error, match="limit is 2000"):
        handlers.feedback("up", "x" * 2001, turns)


def like(index: int, liked: Any) -> Any:
    return SimpleNamespace(index=index, liked=liked, value=None)


def test_thumbs_on_a_message_store_that_answer(
    handlers: ChatHandlers, store: FeedbackStore
) -> None:
    _, turns, _ = run(handlers, "mda5?")[-1]
    _, turns, _ = run(handlers, "ibm?", turns)[-1]
    assert handlers.like(turns, like(1, True)) == "Thanks: your feedback was saved."
    handlers.like(turns, like(3, False))
    handlers.like(turns, like(0, True))  # a question: ignored
    handlers.like(turns, like(9, True))  # gone: ignored
    handlers.like(turns, like(1, None))  # vote taken back: nothing deleted, nothing added
    rows = store.rows()
    assert [(r.question, r.rating, r.comment) for r in rows] == [
        ("mda5?", "up", ""),
        ("ibm?", "down", ""),
    ]


def test_mode_text_reports_service_problems(store: FeedbackStore, tmp_path: Path) -> None:
    class Broken(FakeChain):
        @property
        def info(self) -> dict[str, Any]:
            raise MyoQAError("No index at index/; run myositis-qa index.")

    handlers = ChatHandlers(Broken(), chat_settings(tmp_path), store)
    assert handlers.mode_text() == "⚠ No index at index/; run myositis-qa index."
    ok = ChatHandlers(FakeChain(mode="llm:fake-model"), chat_settings(tmp_path), store)
    assert "LLM (fake-model)" in ok.mode_text()


def test_api_ask_returns_the_contract_and_is_rate_limited(
    store: FeedbackStore, tmp_path: Path
) -> None:
    clock = [0.0]
    limiter = RateLimiter(2, clock=lambda: clock[0])
    chain = FakeChain()
    handlers = ChatHandlers(chain, chat_settings(tmp_path), store, rate_limiter=limiter)
    request = SimpleNamespace(client=SimpleNamespace(host="10.0.0.1"))
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert handlers.api_ask("mda5?", history, request) == mda5_answer().contract()  # type: ignore[arg-type]
    assert chain.calls[-1].history == history
    with pytest.raises(gr.Error, match="history must be"):
        handlers.api_ask("mda5?", [{"role": "system", "content": "x"}], request)  # type: ignore[arg-type]
    with pytest.raises(gr.Error, match="Too many requests"):
        handlers.api_ask("mda5?", None, request)  # type: ignore[arg-type]
    with pytest.raises(gr.Error, match="Please type a question"):
        ChatHandlers(chain, chat_settings(tmp_path), store).api_ask("", None, None)


def test_build_app_returns_blocks_without_launching(store: FeedbackStore, tmp_path: Path) -> None:
    settings = chat_settings(
        tmp_path, course={"title": "IIM course 2025", "examples": ["Example one?", "Example two?"]}
    )
    demo = build_app(FakeChain(), settings, store)
    assert isinstance(demo, gr.Blocks)
    assert not demo.is_running
    config = demo.get_config_file()
    text = repr(config)
    assert "IIM course 2025" in text and "Example one?" in text and "Example two?" in text
    assert "For education only" in text
    api = demo.get_api_info()
    assert "/ask" in api["named_endpoints"]
    assert set(api["named_endpoints"]) == {"/ask"}  # chat events are not an API
