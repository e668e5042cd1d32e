"""Self-contained HTML pages for ``ssal report``: matplotlib figures as embedded PNGs, plain
tables, and the plotted numbers embedded as JSON so a page can be checked without its pixels.
"""

from __future__ import annotations

import base64
import html
import io
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
    "figure",
    "html_page",
    "html_table",
    "img_tag",
    "jsonable",
    "png_bytes",
]

DATA_ELEMENT_ID = "ssal-data"
DPI = 90


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no display, no pyplot state), size in inches."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("reports need matplotlib: pip install matplotlib") from None

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes, with no timestamp or software tag (same input, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


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
