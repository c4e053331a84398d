"""Shared pieces of the HTML reports: the Jinja2 environment, number formatting, figures.

Pages are Jinja2 templates shipped in ``bids_qnet/reports/templates/`` with autoescaping on:
every value a template prints is escaped unless it is :class:`markupsafe.Markup` built here
(figure data URIs, inline SVG). Numbers reach the page through :func:`format_number`: a fixed
number of significant digits, thousands separated, never ``-0``, booleans as words.
"""

from __future__ import annotations

import base64
import html
import math
from functools import cache
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from markupsafe import Markup

#: Image types a figure may have, by extension, for data URIs.
MEDIA_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}


@cache
def environment():
    """Return the Jinja2 environment of the report templates (autoescape on, strict)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bids_qnet.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    from bids_qnet.reports.labels import label

    env.filters["num"] = format_number
    env.filters["cell"] = format_cell
    env.filters["label"] = label
    env.globals["records_columns"] = records_columns
    return env


def records_columns(records: list[dict]) -> list[str]:
    """Return the union of the records' keys, in first-seen order."""
    return list(dict.fromkeys(k for record in records for k in record))


def render(template: str, **context: Any) -> str:
    """Render a report template with ``context``; every printed value is escaped."""
    return environment().get_template(template).render(**context)


def format_number(value: Any, digits: int = 3) -> str:
    """Return a number as a reader expects it: ``0.886``, ``1,886,570``, ``-0.15``, never ``-0``.

    Parameters
    ----------
    value : object
        A number (numpy scalars too), a boolean (``yes``/``no``), None or NaN (``n/a``);
        anything else is returned as text.
    digits : int
        Significant digits of a non-integer (at least as many as needed for the integer part
        below 10,000).

    Returns
    -------
    str
    """
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if not isinstance(value, Real):
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return "n/a" if math.isnan(number) else ("∞" if number > 0 else "−∞")
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    magnitude = math.floor(math.log10(abs(number)))
    if abs(number) >= 1e4 or magnitude < -4:
        text = f"{number:.{digits}g}" if magnitude < -4 else f"{number:,.0f}"
    else:
        decimals = max(0, digits - 1 - magnitude)
        text = f"{number:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return _no_negative_zero(text)


def format_cell(value: Any, digits: int = 3) -> str:
    """Return a table cell's text: numbers by :func:`format_number`, lists joined, rest as text."""
    if isinstance(value, list | tuple):
        return ", ".join(format_cell(v, digits) for v in value)
    if isinstance(value, str):
        return value
    return format_number(value, digits)


def _no_negative_zero(text: str) -> str:
    if text.startswith("-") and not any(c in "123456789" for c in text.split("e")[0]):
        return text[1:]
    return text


def figure_uri(path: Path) -> Markup | None:
    """Return a figure file as a ``data:`` URI (the page stays self-contained), None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Markup(f"data:{media};base64,{data}")


def escape(text: Any) -> str:
    """Return ``str(text)`` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)
