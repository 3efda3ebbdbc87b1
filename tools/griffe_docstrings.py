"""A griffe extension for the API reference: hyperloom's docstrings as mkdocstrings reads them.

hyperloom's docstrings follow the Google style with an ``Example:`` section (singular) and
Sphinx roles such as ``:func:`call```. Griffe's Google parser knows ``Examples:`` only, and
renders Sphinx roles verbatim, so before parsing this extension

- renames a section line ``Example:`` to ``Examples:``, so that ``>>>`` lines render as code;
- turns ``:func:`name``` (``:class:``, ``:meth:``, ``:data:``, ``:attr:``, ``:mod:``) into
  plain code, ``name`` (a leading ``~`` dropped).

The source files are not changed; ``mkdocs.yml`` loads this file as a mkdocstrings extension.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|obj):`~?([^`]+)`")


def rewrite(text: str) -> str:
    """The docstring ``text`` with ``Example:`` sections renamed and Sphinx roles unwrapped.

    Example:
        >>> rewrite("Run :func:`~hyperloom.call`.\\n\\nExample:\\n    >>> 1\\n    1")
        'Run `hyperloom.call`.\\n\\nExamples:\\n    >>> 1\\n    1'
    """
    return _ROLE.sub(r"`\1`", _EXAMPLE.sub(r"\1Examples:", text))


class HyperloomDocstrings(griffe.Extension):
    """Rewrite every docstring before griffe parses it (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
