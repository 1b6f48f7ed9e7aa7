"""HTML pieces of the report: escaped tables, cards, badges, figures and the page around them.

Every value that reaches the page goes through :func:`escape`; images are inlined as data URIs.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fracture_curate import __version__

MAX_TABLE_ROWS = 500  #: rows shown of a long table; the rest are counted
#: The page loads nothing: images are data URIs, styles inline, no script.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def page(titles: dict[str, str], bodies: dict[str, str], *, root: str, warning: str = "") -> str:
    """The whole document: a header, a navigation bar and one ``<section>`` per body, with the
    section ids and headings of ``titles``."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title in titles.items())
    sections = "".join(
        f'<section id="{key}"><h2>{escape(titles[key])}</h2>{body}</section>'
        for key, body in bodies.items()
    )
    style = files(__package__).joinpath("style.css").read_text(encoding="utf-8")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fracture-curate report</title><style>{style}</style></head><body>"
        f"<header><h1>fracture-curate report</h1><p>Dataset root <code>{escape(root)}</code>"
        f" &middot; written {escape(created)} by fracture-curate {escape(__version__)}</p>"
        f"{warning}</header><nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )


def table(
    frame: pd.DataFrame | pd.Series, *, index: bool = True, caption: str | None = None
) -> str:
    """An escaped HTML table of ``frame``, at most ``MAX_TABLE_ROWS`` rows."""
    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    head = "".join(f"<th>{escape(column)}</th>" for column in frame.columns)
    if index:
        head = f"<th>{escape(frame.index.name or '')}</th>" + head
    body = []
    for key, row in zip(frame.index[:MAX_TABLE_ROWS], frame.itertuples(index=False), strict=False):
        cells = "".join(f"<td>{escape(text(value))}</td>" for value in row)
        body.append(f"<tr>{f'<th>{escape(text(key))}</th>' if index else ''}{cells}</tr>")
    more = len(frame) - MAX_TABLE_ROWS
    if more > 0:
        body.append(f'<tr><td colspan="99" class="more">&hellip; {more} more rows</td></tr>')
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def tables_row(*tables: str) -> str:
    """Tables side by side, wrapping on a narrow page."""
    return f'<div class="row">{"".join(tables)}</div>'


def cards(values: dict[str, Any]) -> str:
    """Headline numbers, each a large value over its name."""
    items = "".join(
        f'<div class="card"><b>{escape(text(value))}</b><span>{escape(name)}</span></div>'
        for name, value in values.items()
    )
    return f'<div class="cards">{items}</div>'


def json_tables(value: Any, path: list[str]) -> str:
    """Generic tables of a JSON value: scalars as key/value rows, a dict of flat dicts as one
    table, lists as rows, anything deeper under its own heading."""
    heading = f"<h4>{escape(' / '.join(path))}</h4>" if path else ""
    if isinstance(value, dict):
        if value and all(_flat_dict(item) for item in value.values()):
            return heading + table(pd.DataFrame.from_dict(value, orient="index"))
        scalars = {
            key: ", ".join(map(text, item)) if isinstance(item, list) else item
            for key, item in value.items()
            if _flat(item)
        }
        nested = [
            json_tables(item, [*path, str(key)]) for key, item in value.items() if not _flat(item)
        ]
        scalar_table = table(pd.Series(scalars, dtype=object).to_frame("value")) if scalars else ""
        return heading + scalar_table + "".join(nested)
    if isinstance(value, list):
        if all(isinstance(item, dict) for item in value) or all(
            isinstance(item, list) for item in value
        ):
            return heading + table(pd.DataFrame(value))
        return heading + table(pd.DataFrame({"value": [text(item) for item in value]}))
    return heading + f"<p>{escape(text(value))}</p>"


def figure(uri: str, path: str, lines: list[str]) -> str:
    """A thumbnail with caption ``lines`` (already HTML) and its path."""
    caption = "".join(f"<div>{line}</div>" for line in lines)
    return (
        f'<figure class="thumb"><img src="{uri}" alt="{escape(path)}" title="{escape(path)}">'
        f'<figcaption>{caption}<div class="path">{escape(path)}</div></figcaption></figure>'
    )


def plot(chart: Figure, alt: str) -> str:
    """A matplotlib figure as an inline PNG."""
    buffer = io.BytesIO()
    chart.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    uri = data_uri(buffer.getvalue(), "image/png")
    return f'<figure class="plot"><img src="{uri}" alt="{escape(alt)}"></figure>'


def png_figure(data: bytes, caption: str) -> str:
    """A PNG file's bytes as an inline figure with a caption."""
    uri = data_uri(data, "image/png")
    return (
        f'<figure class="plot"><img src="{uri}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def badge(label: str, kind: str) -> str:
    """A small coloured label: kind "ok", "warn" or "copy"."""
    return f'<span class="badge {kind}">{escape(label)}</span>'


def note(message: str) -> str:
    """A muted paragraph of plain text."""
    return f'<p class="note">{escape(message)}</p>'


def text(value: Any) -> str:
    """A cell's text: numbers short, missing values as a dash."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    """``data`` inlined as a ``data:`` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _flat_dict(value: Any) -> bool:
    return isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values())


def _flat(value: Any) -> bool:
    """A scalar, or a list of scalars (shown comma-separated)."""
    if isinstance(value, list):
        return not any(isinstance(v, dict | list) for v in value)
    return not isinstance(value, dict)
