"""Plain-text and HTML tables for every report object (``EvalReport``, ``Harvest``,
``AttributionGraph``, ...): one helper, so every ``repr`` and ``_repr_html_`` looks alike.

A table is a list of ``(key, header)`` columns and a list of row dicts; a cell is
``fmt(key, row.get(key))``. The first column is left-aligned (names), the rest right-aligned.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

__all__ = ["format_cell", "html_table", "text_table"]

Columns = Sequence[tuple[str, str]]
Formatter = Callable[[str, object], str]


def format_cell(key: str, v) -> str:
    """The default cell format: ``—`` for None, thousands separators for ints, percentages for
    ``*recovered`` keys, 4 decimals otherwise."""
    if v is None:
        return "—"
    if isinstance(v, (bool, str)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if key.endswith("recovered"):
        return f"{100 * v:.1f}%"
    if key == "l0_per_alive":
        return f"{v:.3f}"
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


def text_table(cols: Columns, rows: Sequence[dict], fmt: Formatter = format_cell) -> str:
    """The table as aligned plain text with a ``---`` rule under the header."""
    cells = [[h for _, h in cols]] + [[fmt(k, r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) if i == 0 else x.rjust(w)
                               for i, (x, w) in enumerate(zip(c, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def html_table(cols: Columns, rows: Sequence[dict], fmt: Formatter = format_cell) -> str:
    """The table as an HTML ``<table>``, cells escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:{'left' if i == 0 else 'right'}'>"
                         f"{html.escape(fmt(k, r.get(k)))}</td>" for i, (k, _) in enumerate(cols))
        + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
