"""myositis-qa application: retrieval chain, answerers, chat UI, API and CLI."""

__version__ = "0.1.0"
