"""Self-contained HTML pages for ``ssal report``: figures as embedded PNGs, plain tables, and
the plotted numbers embedded as JSON so a page can be checked without its pixels.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssal.grouping import Grouping

__all__ = [
    "CSS",
    "DATA_ELEMENT_ID",
    "fmt_num",
    "fmt_pct",
    "html_page",
    "html_table",
    "img_tag",
    "jsonable",
    "side_by_side",
]

DATA_ELEMENT_ID = "ssal-data"


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #ccc; } h3 { font-size: 1em; margin: 0.6em 0 0.3em; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr));
        gap: 1.2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
img { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.85em; max-width: 60em; }
ul.groups { font-size: 0.85em; margin: 0.2em 0 0.8em; }
"""


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """A plain HTML table; every cell is escaped."""
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img_tag(png: bytes | None, alt: str) -> str:
    """An ``<img>`` with the PNG inline as a data URI (a note when there is nothing to plot)."""
    if png is None:
        return f'<p class="note">{html.escape(alt)}: nothing to plot.</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def jsonable(obj: Any) -> Any:
    """Plain JSON values: arrays to lists, NaN and infinities to ``null``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Grouping):
        return obj.to_dict()
    if isinstance(obj, (np.integer, bool, np.bool_)):
        return obj.item() if isinstance(obj, np.generic) else obj
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def html_page(
    title: str, intro: str, sections: Sequence[str], data: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A self-contained page: title, ``intro`` and ``sections`` (HTML), and ``data`` embedded
    as JSON in ``<script id="ssal-data">``; returns the page and the plain-JSON data."""
    e = html.escape
    plain = jsonable(data)
    payload = json.dumps(plain, allow_nan=False).replace("</", "<\\/")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{e(title)}</h1><p class='note'>Written {e(time.strftime('%Y-%m-%d %H:%M'))} by "
        f"ssal report.</p>{intro}"
        + "".join(sections)
        + f'<script type="application/json" id="{DATA_ELEMENT_ID}">{payload}</script>'
        + "</body></html>\n"
    )
    return page, plain


def fmt_pct(v: Any) -> str:
    """A fraction as a percentage with two decimals; ``-`` for None or NaN."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def fmt_num(v: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals; ``-`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def side_by_side(title: str, names: Sequence[str], bodies: Iterable[str]) -> str:
    """A section with one block per run (its name over its body), side by side."""
    e = html.escape
    blocks = "".join(f"<div><h3>{e(n)}</h3>{b}</div>" for n, b in zip(names, bodies, strict=True))
    return f"<h2>{e(title)}</h2><div class='runs'>{blocks}</div>"
