"""The Gradio chat for trainees: streamed answers, clickable citations, sources, feedback.

``build_app()`` returns the Blocks and never launches; ``app.web.api.create_app`` mounts
it in the FastAPI host and ``myositis-qa serve`` runs that. The handlers live on
``ChatHandlers`` so tests can call them directly with a fake chain.

Everything that comes from a document (titles, authors, passages, the extracted
answer sentences) and everything a user types is HTML-escaped here before it
reaches the page; only the markup built in this module is HTML. Links are built
from validated identifiers (DOI, PMID, PMCID) or http(s) URLs only.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlparse

import gradio as gr

from app.feedback import MAX_COMMENT_CHARS, FeedbackStore
from app.qa.schema import Answer, Citation, Message, QAService
from app.web.calculator_tab import CSS as CALCULATOR_CSS
from app.web.calculator_tab import add_calculator_tab, option_for
from app.web.limits import check_history, check_text
from indexer.errors import MyoQAError
from indexer.settings import Settings

log = logging.getLogger(__name__)

#: Conversation turns (question + answer) handed to the chain as history.
HISTORY_TURNS = 6
#: The concurrency group of every event that computes an answer (the chat and ``/ask``);
#: ``app.web.guard`` bounds each client's events in it.
ANSWER_GROUP = "answer"

_MARKER_RE = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_DOI_RE = re.compile(r"10\.\d{4,9}/\S+")
_PMID_RE = re.compile(r"\d{1,9}")
_PMCID_RE = re.compile(r"PMC\d{1,9}", re.IGNORECASE)
_SPACE_RE = re.compile(r"\s+")

#: Styles for the answer, citation markers and sources panel (passed at mount time).
CSS = """
.myoqa-header h1 { margin: 0 0 .25rem 0; font-size: 1.6rem; }
.myoqa-welcome { margin: 0 0 .5rem 0; }
.myoqa-disclaimer { border-left: 4px solid #d97706; background: #fffbeb; color: #78350f;
  padding: .5rem .75rem; border-radius: 4px; font-size: .95rem; }
.myoqa-mode { font-size: .9rem; opacity: .85; }
.myoqa-text { margin: 0 0 .5rem 0; line-height: 1.5; }
.myoqa-abstained .myoqa-text { font-style: italic; }
sup.myoqa-cite a { text-decoration: none; font-weight: 600; padding: 0 1px; cursor: pointer; }
.myoqa-sources { margin-top: .5rem; border-top: 1px solid rgba(127,127,127,.3); padding-top: .4rem; }
.myoqa-sources-title { font-weight: 600; font-size: .9rem; margin-bottom: .25rem; }
details.myoqa-source { margin: .25rem 0; padding: .25rem .5rem; border-radius: 4px;
  border: 1px solid rgba(127,127,127,.25); }
details.myoqa-source > summary { cursor: pointer; }
details.myoqa-source.myoqa-flash { outline: 3px solid #2563eb; }
.myoqa-meta, .myoqa-links { font-size: .85rem; margin: .25rem 0; }
blockquote.myoqa-passage { margin: .35rem 0; padding: .35rem .6rem; font-size: .9rem;
  border-left: 3px solid rgba(127,127,127,.5); white-space: normal; }
mark.myoqa-hl { background: #fde68a; color: inherit; padding: 0 1px; }
"""

#: Opens the cited source when a [n] marker is clicked (also for the web component).
JS = """
() => {
  if (window.__myoqaCites) { return; }
  window.__myoqaCites = true;
  document.addEventListener("click", (event) => {
    const path = event.composedPath ? event.composedPath() : [event.target];
    const link = path.find((el) => el && el.matches && el.matches('sup.myoqa-cite a[href^="#myoqa-"]'));
    if (!link) { return; }
    event.preventDefault();
    event.stopPropagation();
    const key = link.getAttribute("href").slice(1);
    const scope = link.closest(".myoqa-answer") || document;
    const box = scope.querySelector("#" + CSS.escape(key)) || document.getElementById(key);
    if (!box) { return; }
    box.open = true;
    box.scrollIntoView({ behavior: "smooth", block: "nearest" });
    box.classList.add("myoqa-flash");
    setTimeout(() => box.classList.remove("myoqa-flash"), 1600);
  }, true);
}
"""


#: The chat sanitizes messages (data-* attributes are dropped), so markers link by id.
class RateLimit(Protocol):
    """What the UI needs from the API's per-client rate limiter."""

    def check(self, client: str) -> float | None:
        """None when allowed, else the seconds to wait."""
        ...


# --- rendering (pure functions) -----------------------------------------------------


def _text(value: object) -> str:
    """Escape any text for HTML, quotes included, on one line."""
    return html.escape(_SPACE_RE.sub(" ", str(value)).strip(), quote=True)


def doi_url(doi: str) -> str | None:
    """https://doi.org link for a well-formed DOI, else None."""
    doi = doi.strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"):
        if doi.lower().startswith(prefix):
            doi = doi[len(prefix) :]
    if not _DOI_RE.fullmatch(doi):
        return None
    return "https://doi.org/" + quote(doi, safe="/:;()._-")


def pubmed_url(pmid: str) -> str | None:
    pmid = pmid.strip()
    return f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/" if _PMID_RE.fullmatch(pmid) else None


def pmc_url(pmcid: str) -> str | None:
    pmcid = pmcid.strip()
    if not _PMCID_RE.fullmatch(pmcid):
        return None
    return f"https://pmc.ncbi.nlm.nih.gov/articles/{pmcid.upper()}/"


def web_url(url: str) -> str | None:
    """The URL when it is plain http(s) with a host; anything else (javascript:, data:) is dropped."""
    url = url.strip()
    parsed = urlparse(url)
    if (
        parsed.scheme.lower() not in ("http", "https")
        or not parsed.netloc
        or any(c.isspace() for c in url)
    ):
        return None
    return url


def _link(href: str, label: str) -> str:
    return (
        f'<a href="{html.escape(href, quote=True)}" target="_blank" rel="noopener noreferrer">'
        f"{_text(label)}</a>"
    )


def highlight_passage(passage: str, highlights: Sequence[str]) -> str:
    """The passage as escaped HTML with every occurrence of a highlight wrapped in <mark>."""
    spans: list[tuple[int, int]] = []
    for highlight in highlights:
        needle = highlight.strip()
        if not needle:
            continue
        start = passage.find(needle)
        while start != -1:
            spans.append((start, start + len(needle)))
            start = passage.find(needle, start + len(needle))
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out.append(_text_keep_edges(passage[pos:start]))
        out.append(f'<mark class="myoqa-hl">{_text_keep_edges(passage[start:end])}</mark>')
        pos = end
    out.append(_text_keep_edges(passage[pos:]))
    return "".join(out).strip()


def _text_keep_edges(value: str) -> str:
    """Escape, collapsing whitespace but keeping a leading/trailing space."""
    return html.escape(_SPACE_RE.sub(" ", value), quote=True)


def source_key(turn: int, n: int) -> str:
    """The id tying a [n] marker of one answer to its entry in the sources panel."""
    return f"myoqa-t{turn}-c{n}"


def link_markers(escaped_text: str, citations: Sequence[Citation], turn: int) -> str:
    """Turn ``[n]`` (and ``[1, 2]``) in escaped answer text into clickable superscripts."""
    titles = {c.n: c.title for c in citations}

    def replace(match: re.Match[str]) -> str:
        numbers = [int(part) for part in match.group(1).split(",")]
        if not all(n in titles for n in numbers):
            return match.group(0)
        return "".join(
            f'<sup class="myoqa-cite"><a href="#{source_key(turn, n)}" '
            f'title="Source {n}: {_text(titles[n])}">'
            f"[{n}]</a></sup>"
            for n in numbers
        )

    return _MARKER_RE.sub(replace, escaped_text)


def render_citation(citation: Citation, turn: int, open_: bool = False) -> str:
    """One entry of the sources panel: reference, links and the highlighted passage."""
    c = citation
    key = source_key(turn, c.n)
    meta = [part.strip().rstrip(".") for part in (c.authors, c.journal) if part.strip()]
    if c.year.strip() and c.year not in c.journal:
        meta.append(c.year)
    where = []
    if c.digest_title.strip():
        # the reference named is the paper; the passage sits in one of our digests
        located = f"in: myositis-qa digest <em>{_text(c.digest_title)}</em>"
        if c.section.strip():
            located += f", section <em>{_text(c.section)}</em>"
        where.append(located)
    elif c.section.strip():
        where.append(_text(f"Section: {c.section}"))
    if c.page is not None:
        pages = f"{c.page}–{c.page_end}" if c.page_end and c.page_end != c.page else f"{c.page}"
        where.append(_text(f"p. {pages}"))
    links = []
    if url := doi_url(c.doi):
        links.append(_link(url, f"DOI {c.doi.strip()}"))
    elif c.doi.strip():
        links.append(f"DOI {_text(c.doi)}")
    if url := pubmed_url(c.pmid):
        links.append(_link(url, f"PubMed {c.pmid.strip()}"))
    if url := pmc_url(c.pmcid):
        links.append(_link(url, c.pmcid.strip().upper()))
    if (url := web_url(c.url)) and url != doi_url(c.doi):
        links.append(_link(url, "Source page"))
    parts = [
        f'<details class="myoqa-source" id="{key}"{" open" if open_ else ""}>',
        f'<summary><span class="myoqa-num">[{c.n}]</span> '
        f'<span class="myoqa-title">{_text(c.title)}</span></summary>',
    ]
    if meta:
        parts.append(f'<div class="myoqa-meta">{_text(". ".join(meta))}</div>')
    if where:
        parts.append(f'<div class="myoqa-meta myoqa-where">{" · ".join(where)}</div>')
    if links:
        parts.append(f'<div class="myoqa-links">{" · ".join(links)}</div>')
    parts.append(
        f'<blockquote class="myoqa-passage">{highlight_passage(c.passage, c.highlights)}</blockquote>'
    )
    parts.append("</details>")
    return "".join(parts)


def render_answer(answer: Answer, turn: int) -> str:
    """A finished answer as one HTML block: linked text, then its sources panel."""
    classes = "myoqa-answer myoqa-abstained" if answer.abstained else "myoqa-answer"
    text = link_markers(_text(answer.answer), answer.citations, turn)
    parts = [f'<div class="{classes}">', f'<p class="myoqa-text">{text}</p>']
    if answer.citations:
        parts.append('<div class="myoqa-sources"><div class="myoqa-sources-title">Sources</div>')
        parts.extend(render_citation(c, turn) for c in answer.citations)
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def render_pending(text: str) -> str:
    """An answer still streaming: escaped text, no links yet."""
    shown = _text(text) or "…"
    return f'<div class="myoqa-answer myoqa-pending"><p class="myoqa-text">{shown} ▍</p></div>'


def render_question(question: str) -> str:
    return f'<div class="myoqa-question">{_text(question)}</div>'


def render_chat(turns: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Chatbot value for a conversation: one user and one assistant message per turn."""
    messages: list[dict[str, Any]] = []
    for turn, record in enumerate(turns):
        messages.append({"role": "user", "content": render_question(record["question"])})
        reply: dict[str, Any] = {
            "role": "assistant",
            "content": render_answer(Answer(**record["answer"]), turn),
        }
        if option := option_for(record["question"]):  # "open in the calculator" (issue 15)
            reply["options"] = [option]
        messages.append(reply)
    return messages


def history_from(turns: Sequence[dict[str, Any]]) -> list[Message]:
    """The conversation as the chain wants it (plain text, newest turns last)."""
    history: list[Message] = []
    for record in list(turns)[-HISTORY_TURNS:]:
        history.append({"role": "user", "content": record["question"]})
        history.append({"role": "assistant", "content": record["answer"]["answer"]})
    return history


def header_html(settings: Settings) -> str:
    course = settings.course
    return (
        '<div class="myoqa-header">'
        f"<h1>{_text(course.title)}</h1>"
        f'<p class="myoqa-welcome">{_text(course.welcome)}</p>'
        f'<div class="myoqa-disclaimer" role="note"><strong>Disclaimer:</strong> '
        f"{_text(course.disclaimer)}</div>"
        "</div>"
    )


def mode_label(info: dict[str, Any]) -> str:
    """E.g. ``Answer mode: extractive · 812 passages indexed``."""
    mode = str(info.get("mode", "unknown"))
    if mode == "extractive":
        described = "extractive (quotes the sources; cannot invent a fact)"
    elif mode.startswith("llm"):
        model = mode.split(":", 1)[1] if ":" in mode else "LLM"
        described = f"LLM ({model}); unsupported sentences are removed"
    else:
        described = mode
    chunks = info.get("n_chunks")
    suffix = f" · {int(chunks):,} passages indexed" if isinstance(chunks, int) else ""
    return f"Answer mode: {described}{suffix}"


# --- handlers ------------------------------------------------------------------------


class ChatHandlers:
    """The chat's event handlers, bound to one service and one feedback store.

    Args:
        service: The chain (or any ``QAService``).
        settings: Application settings (course texts, limits).
        feedback_store: Where votes go.
        rate_limiter: Optional per-client limiter applied to the ``/ask`` API endpoint.
    """

    def __init__(
        self,
        service: QAService,
        settings: Settings,
        feedback_store: FeedbackStore,
        rate_limiter: RateLimit | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.store = feedback_store
        self.rate_limiter = rate_limiter

    def _mode(self) -> str:
        try:
            return str(self.service.info.get("mode", ""))
        except Exception:  # the vote matters more than its mode label
            return ""

    def respond(
        self, question: str, turns: list[dict[str, Any]] | None
    ) -> Iterator[tuple[list[dict[str, str]], list[dict[str, Any]], str]]:
        """Stream an answer: yields (chat messages, turns, textbox value).

        Raises:
            gr.Error: For an empty or over-long question, or when the service fails.
        """
        turns = list(turns or [])
        question = question or ""
        try:
            check_text(question)
        except MyoQAError as exc:
            raise gr.Error(str(exc)) from exc
        history = history_from(turns)
        turn = len(turns)
        pending = [*render_chat(turns), {"role": "user", "content": render_question(question)}]
        stream = self.service.stream(question, history)
        pieces: list[str] = []
        answer: Answer | None = None
        started = False
        try:
            for item in stream:
                if isinstance(item, Answer):
                    answer = item
                    break
                pieces.append(item)
                started = True
                yield (
                    [*pending, {"role": "assistant", "content": render_pending("".join(pieces))}],
                    turns,
                    "",
                )
        except MyoQAError as exc:
            if started:
                yield render_chat(turns), turns, question
            raise gr.Error(str(exc)) from exc
        except Exception as exc:
            log.exception("The chain failed on %r", question)
            if started:
                yield render_chat(turns), turns, question
            raise gr.Error("Answering failed; the error was logged. Please try again.") from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if answer is None:
            log.error("The chain's stream ended without an Answer for %r", question)
            raise gr.Error("Answering failed; the error was logged. Please try again.")
        record = {"question": question.strip(), "answer": answer.contract(), "mode": self._mode()}
        turns = [*turns, record]
        log.info(
            "Answered turn %d (abstained=%s, %d citations)",
            turn,
            answer.abstained,
            len(answer.citations),
        )
        yield render_chat(turns), turns, ""

    def clear(self) -> tuple[list[dict[str, str]], list[dict[str, Any]], str, str, str]:
        """New chat: empty conversation, question, comment and feedback status."""
        return [], [], "", "", ""

    def _store_vote(self, record: dict[str, Any], rating: str, comment: str) -> int:
        try:
            return self.store.add(
                question=record["question"],
                answer=record["answer"]["answer"],
                citations=record["answer"].get("citations", []),
                rating=rating,
                comment=comment,
                mode=record.get("mode", ""),
                channel="ui",
            )
        except MyoQAError as exc:
            raise gr.Error(str(exc)) from exc

    def feedback(
        self, rating: str, comment: str, turns: list[dict[str, Any]] | None
    ) -> tuple[str, str]:
        """Rate the latest answer (with an optional comment); returns (comment box, status)."""
        if not turns:
            raise gr.Error("Ask a question first; feedback is about the latest answer.")
        self._store_vote(turns[-1], rating, comment or "")
        thanks = "Thanks: your feedback was saved."
        return "", thanks

    def like(self, turns: list[dict[str, Any]] | None, data: gr.LikeData) -> str:
        """Thumbs on a message in the conversation; returns the status text."""
        turns = list(turns or [])
        index = data.index if isinstance(data.index, int) else data.index[0]
        turn = index // 2
        if index % 2 != 1 or not 0 <= turn < len(turns):
            return ""  # a question, or a message that is no longer there
        if data.liked is True:
            rating = "up"
        elif data.liked is False:
            rating = "down"
        else:
            return ""  # a vote was taken back: the earlier row stays, nothing is deleted
        self._store_vote(turns[turn], rating, "")
        return "Thanks: your feedback was saved."

    def mode_text(self) -> str:
        """The answer mode line shown under the header."""
        try:
            return mode_label(self.service.info)
        except MyoQAError as exc:
            return f"⚠ {exc}"
        except Exception:
            log.exception("Could not read the service info")
            return "⚠ The answer service is not available; see the server log."

    def api_ask(
        self,
        question: str,
        history: list[dict[str, str]] | None = None,
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """``/ask`` for gradio_client: the same object as ``POST /api/ask``."""
        if self.rate_limiter is not None:
            client = request.client.host if request is not None and request.client else "unknown"
            wait = self.rate_limiter.check(client)
            if wait is not None:
                raise gr.Error(f"Too many requests; try again in {int(wait) + 1} s.")
        try:  # the same limits as POST /api/ask (app.web.limits)
            messages = check_history(history)
            check_text(question if isinstance(question, str) else "")
            return self.service.ask(question, messages).contract()
        except MyoQAError as exc:
            raise gr.Error(str(exc)) from exc


# --- the Blocks ------------------------------------------------------------------------


def build_app(
    service: QAService,
    settings: Settings,
    feedback_store: FeedbackStore,
    *,
    rate_limiter: RateLimit | None = None,
) -> gr.Blocks:
    """The chat as Gradio Blocks (not launched; see ``app.web.api.create_app``).

    Args:
        service: The chain answering questions.
        settings: Course texts and limits come from ``settings.course``/``settings.server``.
        feedback_store: Where thumbs up/down go.
        rate_limiter: Per-client limiter for the ``/ask`` API endpoint.
    """
    handlers = ChatHandlers(service, settings, feedback_store, rate_limiter)
    course = settings.course
    with gr.Blocks(title=course.title, analytics_enabled=False) as demo:
        gr.HTML(header_html(settings), elem_id="myoqa-header")
        mode = gr.Markdown(elem_id="myoqa-mode", elem_classes=["myoqa-mode"])
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                turns = gr.State([])
                chatbot = gr.Chatbot(
                    label="Conversation",
                    elem_id="myoqa-chat",
                    height="70vh",
                    min_height=420,
                    latex_delimiters=[],
                    render_markdown=False,
                    sanitize_html=True,
                    feedback_options=("Like", "Dislike"),
                    buttons=["copy_all"],
                    placeholder="Ask a question, or pick an example below.",
                )
                with gr.Row(equal_height=True):
                    question = gr.Textbox(
                        placeholder="Ask about the classification or management of myositis…",
                        show_label=False,
                        lines=1,
                        max_lines=6,
                        scale=8,
                        elem_id="myoqa-question",
                    )
                    ask = gr.Button("Ask", variant="primary", scale=1, elem_id="myoqa-ask")
                    clear = gr.Button(
                        "New chat", variant="secondary", scale=1, elem_id="myoqa-clear"
                    )
                if course.examples:
                    gr.Examples(
                        examples=[[q] for q in course.examples],
                        inputs=[question],
                        label="Example questions",
                        examples_per_page=max(len(course.examples), 1),
                    )
                with gr.Row(equal_height=True):
                    comment = gr.Textbox(
                        label="Feedback on the latest answer (optional comment)",
                        placeholder="What was right, wrong or missing?",
                        max_length=MAX_COMMENT_CHARS,
                        scale=6,
                        elem_id="myoqa-comment",
                    )
                    up = gr.Button("Helpful", scale=1, elem_id="myoqa-up")
                    down = gr.Button("Not helpful", scale=1, elem_id="myoqa-down")
                status = gr.Markdown(elem_id="myoqa-feedback-status")

            calculator = add_calculator_tab(demo, settings, tabs)
        calculator.link_chat(chatbot)

        # Answers share one concurrency group (the service bounds the work as well);
        # votes, clearing and the mode line never wait behind an answer.
        answering: dict[str, Any] = {
            "concurrency_id": ANSWER_GROUP,
            "concurrency_limit": settings.server.max_concurrent,
        }
        cheap: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": None}
        chat_io: dict[str, Any] = {
            "fn": handlers.respond,
            "inputs": [question, turns],
            "outputs": [chatbot, turns, question],
            "api_visibility": "private",
            "show_progress": "minimal",
            **answering,
        }
        question.submit(**chat_io)
        ask.click(**chat_io)
        reset_outputs = [chatbot, turns, question, comment, status]
        clear.click(handlers.clear, None, reset_outputs, queue=False, api_visibility="private")
        chatbot.clear(handlers.clear, None, reset_outputs, queue=False, api_visibility="private")
        chatbot.like(handlers.like, [turns], [status], **cheap)
        up.click(_rating(handlers, "up"), [comment, turns], [comment, status], **cheap)
        down.click(_rating(handlers, "down"), [comment, turns], [comment, status], **cheap)
        demo.load(handlers.mode_text, None, mode, **cheap)
        gr.api(_api_ask(handlers), api_name="ask", **answering)
    demo.queue(
        default_concurrency_limit=settings.server.max_concurrent,
        max_size=settings.server.queue_size,
    )
    return demo


def _rating(
    handlers: ChatHandlers, rating: str
) -> Callable[[str, list[dict[str, Any]]], tuple[str, str]]:
    def vote(comment: str, turns: list[dict[str, Any]]) -> tuple[str, str]:
        return handlers.feedback(rating, comment, turns)

    vote.__name__ = f"vote_{rating}"
    return vote


def _api_ask(handlers: ChatHandlers) -> Callable[..., dict[str, Any]]:
    def ask(
        question: str,
        history: list[dict[str, str]] | None = None,
        request: gr.Request = None,  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """Answer a question from the indexed literature: {answer, citations, abstained, reason}."""
        return handlers.api_ask(question, history, request)

    return ask


def mount_kwargs(settings: Settings) -> dict[str, Any]:
    """Styling and script for ``gr.mount_gradio_app`` (Gradio 6 takes them at mount time).

    ``max_file_size`` bounds Gradio's multipart parsing; its upload route itself is
    closed by ``app.web.guard`` (the chat has no upload component).
    """
    return {
        "css": CSS + CALCULATOR_CSS,
        "js": JS,
        "theme": gr.themes.Soft(),
        "max_file_size": settings.server.max_request_bytes,
    }


def gradio_js_path() -> Path:
    """The web-component loader shipped inside the gradio package (served as /gradio.js)."""
    return Path(gr.__file__).parent / "templates" / "frontend" / "gradio.js"
