"""`pgesam-live map --out map.png`: the timbre map as a picture; `map --json`: as data.

The training instruments' mean latent points coloured by family (with a legend), each
family's label at its centroid, the named points of the demo patches, zoomed to where they
lie, and an inset with the whole unit disc and the zoomed frame.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.errors import PgesamError
from pgesam_live.vocab.mapview import FAMILY_COLOURS, map_data


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


def run_map(ns: Namespace) -> int:
    from pgesam_live.app.build import named_points  # noqa: PLC0415
    from pgesam_live.app.common import check_out_path, settings_from_args  # noqa: PLC0415
    from pgesam_live.model.checkpoints import (  # noqa: PLC0415
        meta_from_payload,
        read_model_payload,
        resolve_model,
    )

    if getattr(ns, "json", False):
        return _print_json(ns)
    out_path = check_out_path(ns.out, (".png", ".svg", ".pdf"))
    settings = settings_from_args(ns)
    path = resolve_model(settings.model)
    payload, model_id = read_model_payload(path)
    meta = meta_from_payload(payload)
    if not meta.training_points:
        raise PgesamError(f"{path}: the model carries no training points to draw; retrain it "
                          f"with `pgesam-live train all --data DIR`")
    # The demo patches' named points were placed on the bundled model's map: drawn on it only.
    try:
        bundled = resolve_model("default").resolve()
    except PgesamError:
        bundled = None
    named = named_points(settings.patch_dir) if path.resolve() == bundled else {}
    out = draw_map(meta.training_points, named, out_path, title=f"pGESAM timbre map: {model_id}")
    print(f"{out}: {len(meta.training_points)} training instruments, {len(named)} named points")
    return 0


def _print_json(ns: Namespace) -> int:
    """`map --json`: the map the web page draws (its /map.json), before any patch is loaded
    or bookmark made: the model's training points and the names `at NAME` reaches then (the
    demo patches' points)."""
    import json  # noqa: PLC0415

    from pgesam_live.app.build import model_info  # noqa: PLC0415
    from pgesam_live.app.common import settings_from_args  # noqa: PLC0415

    settings = settings_from_args(ns)
    _, info = model_info(settings.model, settings.patch_dir)
    print(json.dumps(map_data(info.model_id, info.training_points, info.named_points,
                              info.pitch_range)))
    return 0
