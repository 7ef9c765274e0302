"""The timbre map as a picture (PNG, SVG, PDF): what `pgesam-live map` and the REPL's
`map png FILE` write. A view of the map, as the terminal map is (termmap.py); matplotlib is
imported only when a picture is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.vocab.mapview import FAMILY_COLOURS


def draw_map(training_points: list[dict[str, Any]], named: dict[str, tuple[float, float]],
             out: str | Path, title: str = "pGESAM timbre map") -> Path:
    """Write the map picture to `out` (PNG, SVG or PDF); returns its path.

    The main view is zoomed to where the points are (the map's families sit well inside the
    unit disc, which a full view leaves unreadable); an inset shows the whole unit disc with
    that view's frame. Family labels sit at their centroids, pushed out from the middle of
    the view so they do not cover the named points."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(9, 8), dpi=110)
    fams = sorted({p["family"] for p in training_points})
    all_pts = np.array([[p["x"], p["y"]] for p in training_points] +
                       [list(xy) for xy in named.values()] or [[0.0, 0.0]], dtype=float)
    centre = all_pts.mean(axis=0)
    half = max(0.35, float(np.abs(all_pts - centre).max()) + 0.18)
    lo, hi = centre - half, centre + half
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls="--", lw=1, color="0.6"))
    for fam in fams:
        pts = np.array([[p["x"], p["y"]] for p in training_points if p["family"] == fam])
        colour = FAMILY_COLOURS.get(fam, "0.3")
        ax.scatter(pts[:, 0], pts[:, 1], s=34, color=colour, alpha=0.85, label=fam,
                   edgecolors="white", linewidths=0.5, zorder=3)
    for fam in fams:
        pts = np.array([[p["x"], p["y"]] for p in training_points if p["family"] == fam])
        colour = FAMILY_COLOURS.get(fam, "0.3")
        c = pts.mean(axis=0)
        away = c - centre
        away = away / (np.linalg.norm(away) + 1e-9) * 0.06 * half / 0.5
        ax.annotate(fam, c, xytext=c + away, fontsize=10, weight="bold", color=colour,
                    ha="center", va="center", zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.75,
                          "ec": colour})
    for name, (x, y) in named.items():
        ax.scatter([x], [y], marker="*", s=150, color="gold", edgecolors="black", zorder=6)
        ax.annotate(name, (x, y), xytext=(7, -11), textcoords="offset points", fontsize=9,
                    style="italic", zorder=7,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "lightyellow", "alpha": 0.85,
                          "ec": "none"})
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.grid(alpha=0.2)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="family")
    # The whole plane: the unit disc, the points, and the frame of the main view.
    inset = fig.add_axes((0.92, 0.12, 0.2, 0.2))  # under the legend
    inset.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls="--", lw=0.8, color="0.5"))
    for fam in fams:
        pts = np.array([[p["x"], p["y"]] for p in training_points if p["family"] == fam])
        inset.scatter(pts[:, 0], pts[:, 1], s=3, color=FAMILY_COLOURS.get(fam, "0.3"))
    inset.add_patch(plt.Rectangle(tuple(lo), 2 * half, 2 * half, fill=False, lw=0.8,
                                  color="black"))
    inset.set_xlim(-1.1, 1.1)
    inset.set_ylim(-1.1, 1.1)
    inset.set_aspect("equal")
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title("unit disc", fontsize=8)
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return p
