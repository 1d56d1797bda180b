"""``python -m aws_reconciler``: the same as ``aws-reconciler``."""

import sys

from .cli import main

sys.exit(main())
