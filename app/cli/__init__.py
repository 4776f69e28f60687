"""The ``myositis-qa`` command: the click group with ``index`` and ``settings``
(``main``), ``ask`` and its ``--batch`` file reader (``ask``), ``serve`` and
``feedback export`` (``serve``), and the helpers all commands share: logging, errors,
settings overrides (``common``).

May import ``app.qa``, ``app.web``, ``app.feedback`` and ``indexer``; nothing imports it.
"""
