"""Fill a map-grid model's unread grid entries, for model files trained before `train` did it.

A `--train-blocks` run trains its map grid only at the training notes' own points and their
instruments' points; every other table entry keeps its random start, so a point between
instruments (a held-out instrument, a glide, the 5 x 5 map grid) reads noise. `train` now
fills those entries itself (`MapGrid.fill_unread`: Laplace's equation, the read entries
fixed); this does the same to a finished model file, with the training set it was trained on:

    python scripts/fill_map_grid.py MODEL --data data/gm --out DIR

What the notes at the training points play does not change (they read only kept entries).
Only for a model whose last phase was a `--train-blocks` run: a grid trained with the whole
decoder saw noisy points, so the entries around them trained too.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from pgesam_live.errors import PgesamError
from pgesam_live.model.checkpoints import load_model, save_model
from pgesam_live.model.data import instrument_means, load_frames
from pgesam_live.model.train import encode_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model file or name with a map grid")
    ap.add_argument("--data", required=True, type=Path,
                    help="the NSynth-format set the model was trained on")
    ap.add_argument("--out", required=True, type=Path, help="directory for the new model file")
    ns = ap.parse_args(argv)
    try:
        bundle = load_model(ns.model)
        tr = bundle.transformer
        name = bundle.path.name if bundle.path is not None else str(ns.model)
        grid = getattr(tr, "map_grid", None)
        if grid is None:
            raise PgesamError(f"{name} has no map grid: nothing to fill")
        if bundle.meta.training.get("map_grid_filled_entries"):
            raise PgesamError(f"{name}'s grid is filled already")
        if not bundle.meta.training.get("transformer_train_blocks"):
            raise PgesamError(f"{name}'s grid was trained with the whole decoder at noisy "
                              "points (not --train-blocks): the entries around its points "
                              "trained too, and filling would overwrite them")
        fs = load_frames(ns.data, "train", bundle.codec,
                         pitch_range=tuple(bundle.meta.pitch_range),  # type: ignore[arg-type]
                         n_frames=tr.cfg.n_frames, duration_s=4.0)
        missing = set(bundle.meta.instrument_names) - set(fs.instrument_names)
        if missing:
            raise PgesamError(f"{ns.data} lacks {len(missing)} of the model's training "
                              f"instruments (e.g. {sorted(missing)[0]}): give the set it "
                              "was trained on")
        # Only the model's own instruments' notes (a run with --max-instruments-per-family
        # trained on fewer than the set holds): those are the points its grid was trained at.
        trained = set(bundle.meta.instrument_names)
        ours = torch.tensor([fs.instrument_names[int(i)] in trained for i in fs.instrument])
        mu, _ = encode_all(bundle.vae, fs.frames[ours, :tr.cfg.n_frames].float())
        points = torch.cat([mu, instrument_means(mu, fs.instrument[ours].long())])
        filled = grid.fill_unread(points)
        training = {**bundle.meta.training, "map_grid_filled_entries": filled}
        path = save_model(ns.out, bundle.vae, tr,
                          dataclasses.replace(bundle.meta, training=training))
    except PgesamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{filled} grid entries filled; model file: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
