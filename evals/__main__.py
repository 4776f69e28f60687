"""``python -m evals`` runs the ``myositis-qa-eval`` command."""

import sys

from evals.cli import main

sys.exit(main())
