"""Serving: the Gradio chat (``ui``), the HTTP API with its limits, rate limiting and
embedding support (``api``), and the uvicorn server that hosts both (``server``).

May import ``app.qa`` (the answer contract and chain), ``app.feedback`` and ``indexer``;
never ``app.cli``.
"""
