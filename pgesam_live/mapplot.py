"""`pgesam-live map --out map.png`: the timbre map as a picture.

The training instruments' mean latent points coloured by family (with a legend), the unit
disc, each family's label at its centroid, and the named points of the demo patches.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.errors import PgesamError

FAMILY_COLOURS = {
    "bass": "#1f77b4", "brass": "#ff7f0e", "flute": "#2ca02c", "guitar": "#d62728",
    "keyboard": "#9467bd", "mallet": "#8c564b", "organ": "#e377c2", "reed": "#7f7f7f",
    "string": "#bcbd22", "synth_lead": "#17becf", "vocal": "#000000",
}


def draw_map(training_points: list[dict[str, Any]], named: dict[str, tuple[float, float]],
             out: str | Path, title: str = "pGESAM timbre map") -> Path:
    """Write the map picture to `out` (PNG); returns its path."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 8), dpi=110)
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls="--", lw=1, color="0.6"))
    fams = sorted({p["family"] for p in training_points})
    for fam in fams:
        pts = np.array([[p["x"], p["y"]] for p in training_points if p["family"] == fam])
        colour = FAMILY_COLOURS.get(fam, "0.3")
        ax.scatter(pts[:, 0], pts[:, 1], s=28, color=colour, alpha=0.8, label=fam,
                   edgecolors="white", linewidths=0.5)
        cx, cy = pts.mean(axis=0)
        ax.text(cx, cy, fam, fontsize=11, weight="bold", color=colour, ha="center",
                va="center", bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.7,
                                   "ec": colour})
    for name, (x, y) in named.items():
        ax.scatter([x], [y], marker="*", s=180, color="gold", edgecolors="black", zorder=5)
        ax.annotate(name, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=10,
                    weight="bold")
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.grid(alpha=0.2)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="family")
    fig.tight_layout()
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p


def run_map(ns: Namespace) -> int:
    from pgesam_live.app import _named_points, check_out_path  # noqa: PLC0415
    from pgesam_live.model.checkpoints import (  # noqa: PLC0415
        meta_from_payload,
        read_model_payload,
        resolve_model,
    )
    from pgesam_live.settings import Settings  # noqa: PLC0415

    out_path = check_out_path(ns.out, (".png", ".svg", ".pdf"))
    path = resolve_model(ns.model)
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
    named = _named_points(Settings.from_env().patch_dir) if path.resolve() == bundled else {}
    out = draw_map(meta.training_points, named, out_path, title=f"pGESAM timbre map: {model_id}")
    print(f"{out}: {len(meta.training_points)} training instruments, {len(named)} named points")
    return 0
