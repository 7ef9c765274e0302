"""The sound sheet: what a model sounds like, on one PNG.

For a fixed set of instruments of different families (training ones at their own map point,
held-out ones at the point the VAE gives their notes), at one pitch: the original note, the
codec's round trip and the generated note as spectrograms, and their level envelopes on one
plot; below, the 5 x 5 map grid over the training points' bounding box (level envelope and
spectral centroid of each cell's note). Everything is computed, nothing is read from disk
but the data set and the model.

Usage: .venv/bin/python bench/sound_sheet.py --data DIR [--model default] [--pitch 60]
       [--out docs/sound-sheet.png] [--instruments fluidr3_gm_000 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgesam_live.model import metrics  # noqa: E402
from pgesam_live.model.data import load_audio, read_split  # noqa: E402
from pgesam_live.model.synth import Synth  # noqa: E402

# Training instruments of eight families and three held-out ones (FluidR3 bank, GM programs).
DEFAULT_INSTRUMENTS = (
    "fluidr3_gm_000",  # acoustic grand piano (keyboard)
    "fluidr3_gm_024",  # nylon guitar (guitar)
    "fluidr3_gm_011",  # vibraphone (mallet)
    "fluidr3_gm_040",  # violin (string)
    "fluidr3_gm_073",  # flute (flute)
    "fluidr3_gm_056",  # trumpet (brass)
    "fluidr3_gm_016",  # drawbar organ (organ)
    "fluidr3_gm_081",  # saw lead (synth_lead)
    "fluidr3_gm_033",  # finger bass (bass; held out)
    "fluidr3_gm_048",  # string ensemble (string; held out)
    "fluidr3_gm_107",  # koto (held out)
)
ENV_HOP_S = 0.01


def level_curve_db(wave: np.ndarray, sr: int) -> np.ndarray:
    """RMS level every 10 ms (20 ms windows), dB re the note's peak, floored at -80."""
    hop, win = int(ENV_HOP_S * sr), int(0.02 * sr)
    n = max(1, 1 + (len(wave) - win) // hop)
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt((wave[idx].astype(np.float64) ** 2).mean(axis=1) + 1e-20)
    return np.maximum(20 * np.log10(rms / rms.max()), -80.0)


def find_note(data: Path, name: str, pitch: int):  # type: ignore[no-untyped-def]
    for split in ("train", "valid", "test"):
        for n in read_split(data, split):
            if n.instrument_str == name and n.pitch == pitch and n.velocity == 100:
                return n
    return None


@torch.inference_mode()
def instrument_point(synth: Synth, name: str, wave: np.ndarray) -> tuple[np.ndarray, bool]:
    """(x, y) of an instrument: its training point, else its note through the VAE."""
    for p in synth.training_points:
        if p["name"] == name:
            return np.array([p["x"], p["y"]], dtype=np.float32), True
    frames = synth.codec.encode(torch.as_tensor(wave, device=synth.device)[None])
    mu = synth.vae.encode(frames[:, :synth.vae.cfg.n_frames].float())[0]
    return mu[0].detach().cpu().numpy().astype(np.float32), False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--pitch", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("docs/sound-sheet.png"))
    ap.add_argument("--instruments", nargs="+", default=list(DEFAULT_INSTRUMENTS))
    ns = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synth = Synth.load(ns.model, device="cpu")
    sr = synth.sample_rate
    n_samples = int(round(synth.duration_s * sr))
    rows = []
    for name in ns.instruments:
        note = find_note(ns.data, name, ns.pitch)
        if note is None:
            print(f"skipped {name}: no note at MIDI {ns.pitch} in {ns.data}", file=sys.stderr)
            continue
        orig = load_audio(note.path, sr, n_samples)
        with torch.inference_mode():
            frames = synth.codec.encode(torch.as_tensor(orig)[None])
        codec_wave = synth.decode_frames(frames)[0]
        point, trained = instrument_point(synth, name, orig)
        gen = synth.render(point[None], [ns.pitch], seed=0)[0]
        label = f"{name} ({note.family_str}{'' if trained else ', held out'})"
        rows.append((label, point, [orig, codec_wave, gen]))
    if not rows:
        print("no instrument found: check --data and --instruments", file=sys.stderr)
        return 1

    # The map grid at the same pitch.
    xy = np.array([[p["x"], p["y"]] for p in synth.training_points], dtype=np.float32)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    g = 5
    gx, gy = np.linspace(lo[0], hi[0], g), np.linspace(lo[1], hi[1], g)
    grid = np.array([[x, y] for y in gy[::-1] for x in gx], dtype=np.float32)  # top row first
    grid_waves = synth.render(grid, [ns.pitch] * len(grid), seed=0)

    n = len(rows)
    fig = plt.figure(figsize=(17, 2.0 * n + 7.5))
    gs = fig.add_gridspec(n + 1, 4, height_ratios=[1.0] * n + [3.4], hspace=0.45, wspace=0.18,
                          top=0.96, bottom=0.02)
    titles = ["original", "codec round trip", "generated at its map point"]
    t_end = n_samples / sr
    for r, (label, point, waves) in enumerate(rows):
        for c, w in enumerate(waves):
            ax = fig.add_subplot(gs[r, c])
            spec = metrics.log_band_spectrogram(w, sr)
            ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                      extent=(0, t_end, 0, spec.shape[0]))
            ax.set_yticks([0, 16, 32, 47], ["40", "290", "2.1k", "12k"], fontsize=6)
            ax.tick_params(axis="x", labelsize=6)
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        ax = fig.add_subplot(gs[r, 3])
        for w, style, lab in zip(waves, ("k-", "b--", "r-"), ("orig", "codec", "gen"),
                                 strict=True):
            curve = level_curve_db(w, sr)
            ax.plot(np.arange(len(curve)) * ENV_HOP_S, curve, style, lw=0.9, label=lab)
        ax.set_ylim(-80, 3)
        ax.tick_params(labelsize=6)
        ax.set_title(f"level dB re peak; point ({point[0]:+.2f}, {point[1]:+.2f})", fontsize=7)
        if r == 0:
            ax.legend(fontsize=6, loc="upper right")
    sub = gs[n, :].subgridspec(g, 2 * g, wspace=0.08, hspace=0.3)
    for i, w in enumerate(grid_waves):
        rr, cc = divmod(i, g)
        ax = fig.add_subplot(sub[rr, cc])
        spec = metrics.log_band_spectrogram(w, sr)
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"({grid[i, 0]:+.2f}, {grid[i, 1]:+.2f})", fontsize=6)
        ax2 = fig.add_subplot(sub[rr, g + cc])
        curve = level_curve_db(w, sr)
        ax2.plot(np.arange(len(curve)) * ENV_HOP_S, curve, "r-", lw=0.8)
        ax2.set_ylim(-80, 3)
        ax2.set_xticks([])
        ax2.set_yticks([])
        cent = metrics.spectral_centroid_hz(w, sr)
        ax2.set_title(f"centroid {cent:.0f} Hz", fontsize=6)
    fig.suptitle(f"Sound sheet: {synth.model_id} at MIDI {ns.pitch}. Rows: original | codec | "
                 "generated spectrograms (48 log bands, dB re peak) and level envelopes. "
                 "Bottom: the 5 x 5 map grid over the training points (spectrogram | level).",
                 fontsize=10, y=0.985)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(ns.out, dpi=72, bbox_inches="tight")
    _to_palette(ns.out)
    print(f"written {ns.out}")
    return 0


PALETTE_COLOURS = 128  # the sheet as a palette PNG: a third of the bytes, the same picture


def _to_palette(path: Path) -> None:
    """Rewrite the PNG at `path` with a PALETTE_COLOURS-colour palette (the repository keeps
    every version of the sheet: 0.33 MB a version instead of 1.1 MB)."""
    from PIL import Image  # noqa: PLC0415 (matplotlib's own dependency)

    with Image.open(path) as im:
        pal = im.convert("RGB").quantize(colors=PALETTE_COLOURS,
                                         method=Image.Quantize.MEDIANCUT)
    pal.save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
