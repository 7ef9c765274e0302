"""What keeps generated notes from their own instrument? A probe for identity_nn.

Oracle swaps: each generated note's frames (free-running, at its own note's latent point, as
`pgesam-live eval` renders them) with one group of codec channels replaced by the original
note's own frames, decoded, and scored as identity_nn scores (nearest original among every
instrument of the split at the same pitch, log-band spectrogram, levels re peak). A group
whose swap lifts the identity most is where the generator loses the instrument. Also: the
mean log-band distance to the note's own original (over the first 0.5 s, 0.5-3 s and the
release), the harmonic shares' error in dB by harmonic band, and how crowded the map is (for
each note, the nearest note of another GM program at the same pitch).

    .venv/bin/python bench/identity_probe.py --data DATA [--split train] [--notes 60]
        [--model M] [--swaps none,loud,harm]

Harmonic codec models only. Figures on stdout, one line per swap.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pgesam_live.model import metrics
from pgesam_live.model.checkpoints import load_model
from pgesam_live.model.codec import HarmonicCodec
from pgesam_live.model.data import load_audio, load_frames
from pgesam_live.model.synth import Synth


def swap_groups(k: int, dim: int) -> dict[str, list[int] | str]:
    """Swap name -> the channels taken from the original (or a named static variant)."""
    harm = list(range(2, 2 + k))
    return {"none": [], "f0": [0], "loud": [1], "harm": harm, "noise": list(range(2 + k, dim)),
            "loud+harm": [1, *harm], "harm1-8": harm[:8], "harm9-64": harm[8:],
            "harm-static": "static", "all": list(range(dim))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--model", default="default")
    ap.add_argument("--notes", type=int, default=60)
    ap.add_argument("--swaps", default=",".join(swap_groups(64, 98)))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    bundle = load_model(a.model)
    codec = bundle.codec
    if not isinstance(codec, HarmonicCodec):
        raise SystemExit(f"{a.model}: the probe reads the harmonic codec's channels")
    synth = Synth(bundle, device="cpu")
    fs = load_frames(a.data, a.split, codec, pitch_range=bundle.pitch_range, velocities=None,
                     max_instruments_per_family=None, progress=False, n_frames=300)
    rng = np.random.default_rng(a.seed)
    idx = np.sort(rng.choice(len(fs.pitch), min(a.notes, len(fs.pitch)), replace=False))
    frames = fs.frames.float()
    vae, tr = bundle.vae, bundle.transformer
    with torch.no_grad():
        mu = vae.encode(frames[idx, :vae.cfg.n_frames])[0]
        gen = synth.finish_frames(tr.generate(mu, fs.pitch[idx], n_frames=frames.shape[1]),
                                  fs.pitch[idx], mu)
    true = frames[idx]
    k, sr = codec.n_harmonics, codec.sample_rate
    n_samples = int(round(frames.shape[1] / codec.frame_rate_hz * sr))
    keys = [metrics.identity_key(fs.instrument_names[int(i)]) for i in fs.instrument]
    pitches = fs.pitch.numpy()
    wanted = {int(pitches[i]) for i in idx}
    cands: dict[int, list[tuple[str, np.ndarray]]] = {p: [] for p in wanted}
    for j, note in enumerate(fs.notes):
        if int(pitches[j]) in wanted:
            wave = load_audio(note.path, sr, n_samples)
            cands[int(pitches[j])].append((keys[j], metrics.log_band_spectrogram(wave, sr)))
    origs = [metrics.log_band_spectrogram(load_audio(fs.notes[int(i)].path, sr, n_samples), sr)
             for i in idx]
    aud = (true[..., 1:2] > 0.05).float()
    groups = swap_groups(k, codec.dim)
    chance = np.mean([sum(c == keys[int(i)] for c, _ in cands[int(pitches[i])])
                      / len(cands[int(pitches[i])]) for i in idx])
    print(f"{a.model} on {a.data} {a.split}: {len(idx)} notes (identity chance {chance:.3f})")
    for name in a.swaps.split(","):
        ch = groups[name]
        f = gen.clone()
        if ch == "static":  # the original's spectrum averaged over its audible frames
            m = (true[..., 2:2 + k] * aud).sum(1, keepdim=True) / aud.sum(1, keepdim=True).clamp(
                min=1)
            f[..., 2:2 + k] = m.expand_as(f[..., 2:2 + k])
        elif ch:
            f[..., ch] = true[..., ch]
        audio = np.concatenate([synth.decode_frames(f[s:s + 20], seed=a.seed)
                                for s in range(0, len(idx), 20)])
        own, dist, parts = [], [], np.zeros(3)
        for j, i in enumerate(idx):
            q = metrics.log_band_spectrogram(audio[j], sr)
            own.append(metrics.nearest_is_own(q, keys[int(i)], cands[int(pitches[i])]))
            n = min(q.shape[1], origs[j].shape[1])
            d = np.abs(q[:, :n] - origs[j][:, :n])
            dist.append(d.mean())
            parts += [d[:, :n // 8].mean(), d[:, n // 8: 3 * n // 4].mean(),
                      d[:, 3 * n // 4:].mean()]
        parts /= len(idx)
        print(f"swap {name:12s} identity {np.mean(own):.3f}  distance to own original "
              f"{np.mean(dist):.2f} dB (0-0.5 s {parts[0]:.2f}, 0.5-3 s {parts[1]:.2f}, "
              f"release {parts[2]:.2f})", flush=True)

    a_mask = aud[..., 0] > 0

    def db(x: torch.Tensor) -> torch.Tensor:
        return 20 * torch.log10(x.clamp(min=1e-4))

    err = (db(gen[..., 2:2 + k]) - db(true[..., 2:2 + k])).abs()[a_mask]
    for lo, hi in ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64)):
        share = db(true[..., 2 + lo:2 + hi])[a_mask].mean()
        print(f"harmonics {lo + 1}-{hi}: share error {err[:, lo:hi].mean():.1f} dB "
              f"(their share in the originals {share:.1f} dB)")

    # How crowded the map is: the nearest note of another program at the same pitch.
    with torch.no_grad():
        mu_all = torch.cat([vae.encode(fs.frames[s:s + 256, :vae.cfg.n_frames].float())[0]
                            for s in range(0, len(fs.pitch), 256)]).numpy()
    key_arr = np.array(keys)
    near = []
    for i in range(len(pitches)):
        m = (pitches == pitches[i]) & (key_arr != key_arr[i])
        if m.any():
            near.append(np.sqrt(((mu_all[m] - mu_all[i]) ** 2).sum(1)).min())
    q = np.percentile(near, [10, 25, 50, 75])
    print(f"map: nearest other-program note at the same pitch, percentiles 10/25/50/75: "
          f"{q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f} / {q[3]:.4f}; within 0.02: "
          f"{np.mean(np.array(near) < 0.02):.2f}")


if __name__ == "__main__":
    main()
