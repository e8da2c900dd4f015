"""HTML of the reports: Jinja2 templates shipped as package data (``data/templates``).

``base.html.j2`` holds the page and its inline CSS; ``subject``, ``group`` and ``training``
extend it; ``macros.html.j2`` has the tables shared by all. Autoescape is on: the Python side
passes plain values (strings, numbers, rows) and never builds markup itself.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import jinja2


def fmt(value, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals, booleans as yes/no, None as an en dash."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool) or value in ("true", "false", "True", "False"):
        return "yes" if str(value).lower() == "true" else "no"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if f.is_integer() and not isinstance(value, float) and "." not in str(value):
        return str(int(f))
    return f"{f:.{digits}f}"


NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?( / [-+]?\d+(\.\d+)?)?")
MISSING = ("–", "n/a")


def numeric_columns(rows, n: int) -> list[bool]:
    """Which of ``n`` table columns hold numbers only (``12``, ``0.5``, ``3 / 22``; missing
    values allowed): the templates align those right and text left."""
    def number(c):
        return isinstance(c, str) and NUMBER.fullmatch(c) is not None

    return [bool(rows) and any(number(r[j]) for r in rows)
            and all(number(r[j]) or r[j] in MISSING for r in rows) for j in range(n)]


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gentract_bids", "data/templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["numeric_columns"] = numeric_columns
    return env


def render(template: str, **context) -> str:
    """The page ``template`` (a file of ``data/templates``) rendered with ``context``."""
    return environment().get_template(template).render(**context)


def macro(name: str):
    """A macro of ``macros.html.j2`` as a Python callable (returns escaped markup)."""
    return getattr(environment().get_template("macros.html.j2").module, name)


def write_html(path, text: str) -> Path:
    """Write a finished report atomically (the one place the reports are written)."""
    from ..io.commit import write_atomic

    path = Path(path)
    write_atomic(path, text)
    return path
