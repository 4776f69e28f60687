"""myositis-qa application, in three packages and the feedback store.

- ``app.qa``: everything between a question and a cited answer (retrieval, answer
  selection, the LLM answerer, verification, scope policy, the answer schema, the chain).
- ``app.web``: the Gradio chat, the HTTP API and the server that hosts both.
- ``app.cli``: the ``myositis-qa`` command and its subcommands.
- ``app.feedback``: the insert-only store of votes and comments.

Dependencies flow ``indexer`` <- ``app.qa`` <- ``app.web`` / ``app.cli``; ``app.qa``
imports neither ``app.web`` nor ``app.cli``.
"""

__version__ = "0.1.0"
