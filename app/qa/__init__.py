"""Question to cited answer: everything the answer depends on, and nothing that serves it.

Owns retrieval (``retrieval``: dense + BM25, fused), lexical matching and its synonym
data (``lexical``, ``data/synonyms.json``), answer-sentence selection (``extractive``),
the optional LLM answerer (``llm``), citation verification and numbering (``verify``),
scope and safety rules (``scope``, ``policy``), the answer contract (``schema``) and the
LangChain chain that ties them together (``chain``).

May import ``indexer`` and the standard/third-party libraries only; never ``app.web``,
``app.cli`` or ``app.feedback``.
"""
