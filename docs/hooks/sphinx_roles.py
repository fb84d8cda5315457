"""mkdocs hook: render Sphinx cross-reference roles left in docstrings as code.

The numpy-style docstrings use ``:class:`X```, ``:func:`f```, ``:meth:`~a.b.c``` for the
help() and Sphinx readers; mkdocstrings renders the role name literally
(``:class:<code>X</code>``). This drops the role and, as Sphinx does for a leading
``~``, shows only the last component of the name.
"""

from __future__ import annotations

import re

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|attr|mod|data|obj|exc|const):<code>(~?)([^<]*)</code>"
)


def _replace(match: re.Match[str]) -> str:
    tilde, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub(_replace, html)
