"""``python -m app.cli`` runs the ``myositis-qa`` command."""

import sys

from app.cli.main import main

sys.exit(main())
