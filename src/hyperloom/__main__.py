"""``python -m hyperloom``: the same as the ``hyperloom`` command."""

import sys

from .cli import main

sys.exit(main())
