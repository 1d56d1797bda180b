"""``python -m aws_reconciler.sandbox``: the same as ``aws-reconciler sandbox``."""

import sys

from .cli import main

sys.exit(main())
