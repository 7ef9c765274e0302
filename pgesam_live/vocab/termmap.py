"""The timbre map as a character grid for the REPL's `map` command.

Training points are drawn by family letter (the most frequent family wins a shared cell),
bookmarks as digits 1..9 (then +), the current point as @. x grows to the right, y upwards,
as in the PNG from `pgesam-live map`; the view is the map's region (vocab/mapview.py), the
same the web page shows.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pgesam_live.vocab.mapview import MapRegion, region_of


def family_letters(families: Sequence[str]) -> dict[str, str]:
    """A distinct one-character mark per family: its initial, else the initial in upper
    case, else its next unused letter (bass b, brass B, string s, synth_lead S, ...)."""
    marks: dict[str, str] = {}
    used = {"@", "+", "."} | set("123456789")
    for fam in dict.fromkeys(families):
        letters = [c for c in fam if c.isalpha()] or ["?"]
        options = [letters[0].lower(), letters[0].upper()] + \
            [c.lower() for c in letters[1:]] + [c.upper() for c in letters[1:]]
        mark = next((c for c in options if c not in used), "?")
        marks[fam] = mark
        used.add(mark)
    return marks


def map_text(points: Sequence[Sequence[Any]], snap: Mapping[str, Any], width: int = 61,
             height: int = 21, columns: int | None = None,
             named: Mapping[str, Sequence[float]] | None = None) -> str:
    """The map of an engine's state: training `points` (x, y, family), and the bookmarks and
    point of a snapshot. With `columns` (a terminal's width) the grid shrinks to fit it
    (keeping its aspect) and the legend lines wrap."""
    if columns is not None:
        width = max(11, min(width, columns - 14))  # "|" grid "|" and "  y = +1.00"
        height = max(5, min(height, round(height * width / 61)))
    text = render_map(list(points or []), snap.get("bookmarks") or {}, snap.get("point"),
                      width, height, named=named)
    if columns is None:
        return text
    return "\n".join(textwrap.fill(line, max(columns, 20), subsequent_indent="  ")
                     if len(line) > columns else line for line in text.split("\n"))


def render_map(points: Any,
               bookmarks: Mapping[str, Sequence[float]] | None = None,
               current: Sequence[float] | None = None,
               width: int = 61, height: int = 21,
               region: MapRegion | None = None,
               named: Mapping[str, Sequence[float]] | None = None) -> str:
    """The map as text: a framed grid, then a legend.

    points: training points (x, y, family); bookmarks: name -> [x, y]; current: [x, y].
    The view is `region` (default: the training points' region, vocab/mapview.py: the one
    the web page shows and a 0..1 pad maps onto); a bookmark outside it is listed, not drawn,
    and the current point outside it sits on the nearest edge."""
    if width < 11 or height < 5:
        raise ValueError("render_map: the grid needs width >= 11 and height >= 5")
    bookmarks = dict(bookmarks or {})
    view = region if region is not None else region_of(points)

    def cell(x: float, y: float) -> tuple[int, int] | None:
        if not view.contains(x, y):
            return None
        col = round((x - view.x_min) / view.width * (width - 1))
        row = round((view.y_max - y) / view.height * (height - 1))
        return row, col

    grid = [[" "] * width for _ in range(height)]
    origin = cell(0.0, 0.0)
    if origin is not None:  # faint axes through the origin, to read positions by eye
        for c in range(width):
            grid[origin[0]][c] = "."
        for r in range(height):
            grid[r][origin[1]] = "."
    marks = family_letters([p[2] for p in points])
    per_cell: dict[tuple[int, int], Counter[str]] = {}
    for x, y, fam in points:
        rc = cell(x, y)
        if rc is not None:
            per_cell.setdefault(rc, Counter())[fam] += 1
    for (r, c), counts in per_cell.items():
        grid[r][c] = marks[counts.most_common(1)[0][0]]
    # Named points (the patch's, the demo patches') as *, under the bookmarks' digits.
    named_legend: list[str] = []
    for name, xy in sorted((named or {}).items()):
        rc = cell(float(xy[0]), float(xy[1]))
        if rc is not None:
            grid[rc[0]][rc[1]] = "*"
        off = "" if rc is not None else " off the map"
        named_legend.append(f"{name} ({float(xy[0]):+.2f}, {float(xy[1]):+.2f}){off}")
    legend_marks: list[str] = []
    for i, (name, xy) in enumerate(bookmarks.items()):
        mark = str(i + 1) if i < 9 else "+"
        rc = cell(xy[0], xy[1])
        if rc is not None:
            grid[rc[0]][rc[1]] = mark
        off = "" if rc is not None else " off the map"
        legend_marks.append(f"{mark} {name} ({xy[0]:+.2f}, {xy[1]:+.2f}){off}")
    if current is not None:
        rc = cell(*view.clamp(float(current[0]), float(current[1])))
        if rc is not None:
            grid[rc[0]][rc[1]] = "@"
    top = f"+{'-' * width}+  y = {view.y_max:+.2f}"
    bottom = f"+{'-' * width}+  y = {view.y_min:+.2f}"
    lines = [top] + ["|" + "".join(r) + "|" for r in grid] + [bottom]
    lines.append(f" x = {view.x_min:+.2f}{' ' * max(1, width - 16)}x = {view.x_max:+.2f}")
    if marks:
        lines.append("families: " + "  ".join(f"{m} {f}" for f, m in marks.items()))
    else:
        lines.append("families: (the model has no training points to show)")
    if named_legend:
        lines.append("* points: " + "  ".join(named_legend))
    if legend_marks:
        lines.append("bookmarks: " + "  ".join(legend_marks))
    if current is not None:
        off = "" if view.contains(float(current[0]), float(current[1])) else \
            " (off the map: @ on its edge)"
        lines.append(f"@ current point ({current[0]:+.2f}, {current[1]:+.2f}){off}")
    return "\n".join(lines)
