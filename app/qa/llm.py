"""The optional LLM answerer: any LangChain chat model, chosen by settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.qa.policy import REFUSAL
from app.qa.schema import Message
from indexer.chunking import Chunk
from indexer.errors import MyoQAError
from indexer.settings import LLMSettings
from indexer.store import LoadedIndex

SYSTEM_PROMPT = f"""You answer questions from medical trainees about idiopathic inflammatory \
myopathies using ONLY the numbered passages provided.
Rules:
- Write 2 to 5 short sentences. End EVERY sentence with the number(s) of the passage(s) that \
support it, like [1] or [2][3].
- Copy every number, dose and unit exactly as the passage writes it. Never add a fact, number \
or citation that is not in the passages.
- If the passages do not answer the question, reply exactly: {REFUSAL}
- Do not give advice about an individual patient."""


def build_messages(
    question: str, chunks: Sequence[Chunk], index: LoadedIndex
) -> list[tuple[str, str]]:
    """The prompt: numbered passages with their source, then the question."""
    blocks = []
    for n, chunk in enumerate(chunks, start=1):
        record = index.source(chunk.source_id)
        blocks.append(f"[{n}] {record.title} — {chunk.section}\n{chunk.text}")
    human = "Passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\nAnswer:"
    return [("system", SYSTEM_PROMPT), ("human", human)]


REWRITE_PROMPT = """Rewrite the user's last question as one standalone question that can be \
understood without the conversation, keeping every medical term. Reply with the question only."""


def build_rewrite_messages(question: str, history: Sequence[Message]) -> list[tuple[str, str]]:
    """The prompt that turns a follow-up ("and in children?") into a standalone question."""
    turns = "\n".join(
        f"{m.get('role', 'user')}: {m.get('content', '')}" for m in history[-6:] if m.get("content")
    )
    return [
        ("system", REWRITE_PROMPT),
        ("human", f"Conversation:\n{turns}\n\nLast question: {question}"),
    ]


def llm_failure(exc: Exception) -> MyoQAError:
    """A failed model call, told to the user with what to check."""
    return MyoQAError(
        f"The language model did not answer ({type(exc).__name__}: {exc}). Check MYOQA_LLM__BASE_URL "
        "and MYOQA_LLM__MODEL, or use the extractive answerer (MYOQA_ANSWER__MODE=extractive)."
    )


def build_chat_model(settings: LLMSettings) -> Any:
    """A LangChain chat model for the configured provider (imports are optional extras)."""
    if not settings.model:
        raise MyoQAError("answer.mode is 'llm' but no model is set: set MYOQA_LLM__MODEL.")
    try:
        if settings.provider == "openai":
            from langchain_openai import ChatOpenAI

            return ChatOpenAI(
                model=settings.model,
                base_url=settings.base_url,
                api_key=settings.api_key.get_secret_value() if settings.api_key else "not-needed",
                temperature=settings.temperature,
                timeout=settings.timeout_s,
            )
        if settings.provider == "ollama":
            from langchain_ollama import ChatOllama

            return ChatOllama(
                model=settings.model, base_url=settings.base_url, temperature=settings.temperature
            )
        from langchain_community.chat_models import ChatLlamaCpp

        return ChatLlamaCpp(model_path=settings.model, temperature=settings.temperature)
    except ImportError as exc:
        raise MyoQAError(
            f"The {settings.provider} answerer needs an optional package ({exc.name}): "
            "pip install 'myositis-qa[llm]' (and llama-cpp-python for a local GGUF)."
        ) from exc
