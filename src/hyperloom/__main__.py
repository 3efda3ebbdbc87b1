"""``python -m hyperloom``: the same as the ``hyperloom`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # importing the module (the doctest collector does) runs nothing
    sys.exit(main())
