"""How far can an unseen instrument's family be told from its sound? A probe for family_knn_acc.

The map's figure (5-NN of each evaluated instrument's mean latent point against the training
instruments' points, as `pgesam-live eval` computes it) next to classifiers that see far more
than two coordinates: the same 5-NN on 196 frame statistics (each codec channel's mean and
deviation over the VAE's frames, standardised on the training notes), and two supervised
classifiers trained on the training notes (logistic regression and a random forest on those
statistics plus a coarse time course), each instrument's family voted over its notes. All
on the frames of the model's codec, MIDI range of the model. scikit-learn comes with librosa.

    .venv/bin/python bench/family_probe.py DATA [MORE_DATA ...] [--model M]

The training instruments are read from the first DATA's train split; every DATA's valid and
test splits are evaluated (a bank it never trained on: pass its folder after the first).
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

from pgesam_live.model.checkpoints import load_model
from pgesam_live.model.data import FAMILIES, FrameSet, load_frames, read_split
from pgesam_live.model.eval import _knn_family


def _stats(fs: FrameSet, n_frames: int) -> np.ndarray:
    """[N, T, D] frames -> [N, 2D + D*ceil(T/8)] per-note statistics."""
    f = fs.frames[:, :n_frames].numpy()
    return np.concatenate([f.mean(1), f.std(1), f[:, ::8].reshape(len(f), -1)], 1)


def _per_instrument(values: np.ndarray, fs: FrameSet) -> tuple[np.ndarray, np.ndarray]:
    """Per-note rows -> (per-instrument mean rows, per-instrument family index)."""
    inst, fam = fs.instrument.numpy(), fs.family.numpy()
    ids = np.unique(inst)
    return (np.stack([values[inst == i].mean(0) for i in ids]),
            np.array([fam[inst == i][0] for i in ids]))


def _vote(pred: np.ndarray, fs: FrameSet) -> float:
    """Share of instruments whose notes' majority prediction is their family."""
    inst, fam = fs.instrument.numpy(), fs.family.numpy()
    hits = [np.bincount(pred[inst == i], minlength=len(FAMILIES)).argmax() == fam[inst == i][0]
            for i in np.unique(inst)]
    return float(np.mean(hits))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--model", default="default")
    ns = ap.parse_args()
    from sklearn.ensemble import RandomForestClassifier  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    warnings.filterwarnings("ignore")
    bundle = load_model(ns.model, device="cpu")
    lo, hi = bundle.pitch_range
    n_vae = bundle.vae.cfg.n_frames

    def frames(root: str, split: str) -> FrameSet:
        return load_frames(root, split, bundle.codec, pitch_range=(lo, hi), velocities=None,
                           progress=False)

    train = frames(ns.data[0], "train")
    x_tr = _stats(train, n_vae)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    z_tr = (x_tr - mean) / std
    n_stats = 2 * train.frames.shape[2]  # the means and deviations only, for the 5-NN
    inst_tr, fam_tr = _per_instrument(z_tr[:, :n_stats], train)
    ref = bundle.training_points
    ref_pts = np.array([[p["x"], p["y"]] for p in ref], dtype=np.float32)
    ref_fams = np.array([FAMILIES.index(p["family"]) for p in ref])
    logreg = LogisticRegression(C=0.05, max_iter=2000).fit(z_tr, train.family.numpy())
    forest = RandomForestClassifier(300, n_jobs=2, random_state=0).fit(z_tr,
                                                                      train.family.numpy())
    rows = []
    for root in ns.data:
        for split in ("valid", "test"):
            if not read_split(root, split):
                continue
            fs = frames(root, split)
            z = (_stats(fs, n_vae) - mean) / std
            with torch.no_grad():
                mu = torch.cat([bundle.vae.encode(fs.frames[i:i + 64, :n_vae])[0]
                                for i in range(0, len(fs), 64)]).numpy()
            pts, fams = _per_instrument(mu, fs)
            feats, _ = _per_instrument(z[:, :n_stats], fs)
            rows.append({
                "data": root, "split": split, "instruments": int(len(fams)),
                "map_5nn": _knn_family(pts, fams, ref_pts, ref_fams),
                "stats_5nn": _knn_family(feats, fams, inst_tr, fam_tr),
                "logreg_vote": _vote(logreg.predict(z), fs),
                "forest_vote": _vote(forest.predict(z), fs),
            })
            print(json.dumps(rows[-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
