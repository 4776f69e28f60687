"""The eval suite: question sets, metrics, the support judge, the runner and the benchmark.

Nothing here runs at import time; the entry point is ``myositis-qa-eval`` (``evals.cli:main``).
"""
