"""`pgesam-live map --out map.png`: the timbre map as a picture; `map --json`: as data.

The training instruments' mean latent points coloured by family (with a legend), each
family's label at its centroid, the named points of the demo patches, zoomed to where they
lie, and an inset with the whole unit disc and the zoomed frame.
"""

from __future__ import annotations

from argparse import Namespace

from pgesam_live.errors import PgesamError
from pgesam_live.vocab.mappicture import draw_map
from pgesam_live.vocab.mapview import map_data

__all__ = ["draw_map", "run_map"]


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
    settings = settings_from_args(ns)
    path = resolve_model(settings.model)
    payload, model_id = read_model_payload(path)
    if ns.out is None:
        ns.out = f"map-{model_id}.png"
    out_path = check_out_path(ns.out, (".png", ".svg", ".pdf"))
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
