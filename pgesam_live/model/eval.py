"""The authors' evaluation plus an independent pitch tracker: `pgesam-live eval`.

Figures (JSON keys): mse_vae, mse_transformer, pitch_acc_classifier {real, reconstructed,
generated}, pitch_within_50c, pitch_within_50c_midi, octave_errors, pitch_within_50c_codec (the
codec's own round trip against the original: the ceiling for any model on that codec),
pitch_misses (instrument -> [misses, notes]) (these by PESTO), pitch_median_abs_cents (by YIN),
pitch_yin {within_50c, within_50c_midi, within_50c_codec} (the 50-cent tests by YIN),
var_per_instrument, var_per_pitch, family_knn_acc, codec_mrstft, mrstft_generated (generated
notes against their originals, same distance), plus counts. A short markdown
report goes next to the JSON (or to --report).
"""

from __future__ import annotations

import json
import math
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgesam_live.errors import CodecError, DataError
from pgesam_live.model import metrics
from pgesam_live.model.checkpoints import ModelBundle, load_model
from pgesam_live.model.data import FAMILIES, FrameSet, load_audio, load_frames, read_split

DEFAULT_MAX_NOTES = 240  # generated notes for the audio figures (deterministic subsample)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _subsample(n: int, k: int | None, seed: int = 0) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False))


def _variances(mu: np.ndarray, inst: np.ndarray, pitch: np.ndarray) -> tuple[float, float]:
    """Mean over instruments of the latent variance across its pitches, and mean over pitches
    of the variance across instruments (trace of the 2-D covariance, i.e. summed over x, y)."""
    per_inst = [mu[inst == i].var(axis=0).sum() for i in np.unique(inst) if (inst == i).sum() > 1]
    per_pitch = [mu[pitch == p].var(axis=0).sum() for p in np.unique(pitch)
                 if (pitch == p).sum() > 1]
    return (float(np.mean(per_inst)) if per_inst else math.nan,
            float(np.mean(per_pitch)) if per_pitch else math.nan)


def _knn_family(points: np.ndarray, fams: np.ndarray, ref_pts: np.ndarray, ref_fams: np.ndarray,
                k: int = 5) -> float:
    """Share of `points` whose k nearest reference points vote their family (ties: nearest)."""
    if len(points) == 0 or len(ref_pts) == 0:
        return math.nan
    d = np.linalg.norm(points[:, None, :] - ref_pts[None, :, :], axis=-1)
    order = np.argsort(d, axis=1)[:, :k]
    hits = 0
    for row, fam in zip(order, fams, strict=True):
        votes = ref_fams[row]
        counts = np.bincount(votes, minlength=len(FAMILIES))
        best = np.flatnonzero(counts == counts.max())
        pred = next(v for v in votes if v in best)  # the nearest among the tied families
        hits += int(pred == fam)
    return hits / len(points)


def _fold_octave_cents(c: float) -> float:
    """Cents folded to (-600, 600] (an organ stop an octave off counts as in tune)."""
    return (c + 600.0) % 1200.0 - 600.0


def _pesto_or_nan(wave: np.ndarray, sample_rate: int) -> float:
    """PESTO's reading of a note in Hz; NaN for a silent one (it then counts as a miss)."""
    try:
        return metrics.track_pitch_pesto(wave, sample_rate)
    except CodecError:
        return math.nan


def _abs_cents(a_hz: float, b_hz: float) -> float:
    """|interval| in cents; infinite when either reading is missing (NaN or <= 0)."""
    return abs(metrics.cents(a_hz, b_hz)) if a_hz > 0 and b_hz > 0 else math.inf


@torch.inference_mode()
def evaluate(bundle: ModelBundle, data_dir: str | Path, split: str = "test",
             max_notes: int | None = DEFAULT_MAX_NOTES, seed: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """All figures for `bundle` on the `split` of an NSynth-format directory."""
    from pgesam_live.model.synth import Synth  # noqa: PLC0415

    t0 = time.time()
    vae, tr, codec = bundle.vae, bundle.transformer, bundle.codec
    device = next(vae.parameters()).device
    lo, hi = bundle.pitch_range
    n_tr = tr.cfg.n_frames
    # As training reads them: whole 4 s notes (one frame cache), or what a short model needs.
    duration_s = 4.0 if n_tr >= codec.frame_rate_hz else n_tr / codec.frame_rate_hz + 0.1
    fs: FrameSet = load_frames(data_dir, split, codec, pitch_range=(lo, hi), velocities=None,
                               max_instruments_per_family=None, progress=progress,
                               n_frames=n_tr, duration_s=duration_s)
    if len(fs.pitch) == 0:
        raise DataError(f"{data_dir}: no notes in split {split!r} within MIDI {lo}..{hi}")
    frames = fs.frames.float()
    n_vae = vae.cfg.n_frames
    pitch_idx = (fs.pitch - lo).long()

    # Stage 1: reconstruction, latent means, pitch head on real and reconstructed frames.
    mus, recons, acc_real, acc_rec = [], [], 0, 0
    for sl in _batches(len(frames), 64):
        x = frames[sl, :n_vae].to(device)
        mu, _, logits = vae.encode(x)
        rec = vae.decode(mu, pitch_idx[sl].to(device))
        mus.append(mu.cpu())
        recons.append(rec.cpu())
        acc_real += int((logits.argmax(-1).cpu() == pitch_idx[sl]).sum())
        acc_rec += int((vae.encode(rec)[2].argmax(-1).cpu() == pitch_idx[sl]).sum())
    mu_all = torch.cat(mus)
    rec_all = torch.cat(recons)
    mse_vae = float(((rec_all - frames[:, :n_vae]) ** 2).mean())

    # Stage 2, free-running, on a deterministic subsample (generation is the slow part).
    idx = _subsample(len(frames), max_notes, seed)
    synth = Synth(bundle, device=str(device))
    gen_frames, gen_audio = [], []
    for sl in _batches(len(idx), 25):
        sel = idx[sl]
        pts = mu_all[sel].numpy()
        g = tr.generate(torch.as_tensor(pts, device=device),
                        fs.pitch[sel].to(device), n_frames=frames.shape[1])
        gen_frames.append(g.float().cpu())
        gen_audio.append(synth.decode_frames(g, seed=seed))
    gen = torch.cat(gen_frames)
    mse_tr = float(((gen - frames[idx]) ** 2).mean())
    acc_gen = 0
    for sl in _batches(len(gen), 64):
        logits = vae.encode(gen[sl, :n_vae].to(device))[2]
        acc_gen += int((logits.argmax(-1).cpu() == pitch_idx[idx[sl]]).sum())
    audio = np.concatenate(gen_audio)

    # Independent pitch trackers on the decoded audio vs the original note and vs MIDI. PESTO
    # for the 50-cent tests (it reads bars and two-voice leads as a listener names them, where
    # YIN jumps between partials); YIN, fine to a few cents, for the median. The codec's own
    # round trip of each original is tracked too: where it reads away from the original, no
    # model on this codec can match it. The YIN versions of the 50-cent tests are kept.
    sr = codec.sample_rate
    n_samples = int(round(frames.shape[1] / codec.frame_rate_hz * sr))
    originals = [load_audio(fs.notes[int(i)].path, sr, n_samples) for i in idx]
    # The round trip decodes the frames the model learned from (encoded as the data set is).
    rt = np.concatenate([synth.decode_frames(frames[idx[sl]], seed=seed)
                         for sl in _batches(len(idx), 25)])
    within, within_midi, within_codec, octave_errs, abs_cents = 0, 0, 0, 0, []
    yin_within, yin_within_midi, yin_within_codec = 0, 0, 0
    misses: dict[str, list[int]] = {}
    for j, i in enumerate(idx):
        midi_hz = 440.0 * 2 ** ((int(fs.pitch[i]) - 69) / 12)
        p_orig, p_gen, p_rt = (_pesto_or_nan(w, sr) for w in (originals[j], audio[j], rt[j]))
        within_codec += int(_abs_cents(p_rt, p_orig) <= 50)
        ok = _abs_cents(p_gen, p_orig) <= 50
        within += int(ok)
        within_midi += int(abs(_fold_octave_cents(metrics.cents(p_gen, midi_hz))) <= 50
                           if p_gen > 0 else 0)
        octave_errs += int(_abs_cents(p_gen, midi_hz) > 600)
        tally = misses.setdefault(fs.instrument_names[int(fs.instrument[i])], [0, 0])
        tally[0] += int(not ok)
        tally[1] += 1

        f_lo, f_hi = midi_hz / 2.3, midi_hz * 2.3
        f_orig, f_gen, f_rt = (metrics.track_pitch(w, sr, f_lo, f_hi)
                               for w in (originals[j], audio[j], rt[j]))
        yin_within_codec += int(f_orig > 0 and f_rt > 0
                                and abs(metrics.cents(f_rt, f_orig)) <= 50)
        if not (f_orig > 0 and f_gen > 0):
            abs_cents.append(math.inf)
            continue
        c = metrics.cents(f_gen, f_orig)
        abs_cents.append(abs(c))
        yin_within += int(abs(c) <= 50)
        yin_within_midi += int(abs(_fold_octave_cents(metrics.cents(f_gen, midi_hz))) <= 50)
    # Codec round trip on the evaluated originals (the foundation issue's MR-STFT).
    # And the generated notes against their originals, on the same distance: how close the
    # whole sound comes (the codec's figure above is its floor).
    mrstft, mrstft_gen = [], []
    for j in range(min(len(idx), 60)):
        n = min(len(originals[j]), rt.shape[1], audio.shape[1])
        mrstft.append(metrics.mrstft_distance(originals[j][:n], rt[j, :n]))
        mrstft_gen.append(metrics.mrstft_distance(originals[j][:n], audio[j, :n]))

    mu_np = mu_all.numpy()
    inst_np, pitch_np, fam_np = fs.instrument.numpy(), fs.pitch.numpy(), fs.family.numpy()
    var_inst, var_pitch = _variances(mu_np, inst_np, pitch_np)
    # 5-NN family of each evaluated instrument's mean point against the training instruments.
    inst_ids = np.unique(inst_np)
    inst_pts = np.stack([mu_np[inst_np == i].mean(axis=0) for i in inst_ids])
    inst_fams = np.array([fam_np[inst_np == i][0] for i in inst_ids])
    ref = bundle.training_points
    ref_pts = np.array([[p["x"], p["y"]] for p in ref], dtype=np.float32).reshape(-1, 2)
    ref_fams = np.array([FAMILIES.index(p["family"]) for p in ref], dtype=np.int64)
    knn = _knn_family(inst_pts, inst_fams, ref_pts, ref_fams)

    n_gen = len(idx)
    return {
        "model": bundle.model_id,
        "data": str(data_dir),
        "split": split,
        "notes": int(len(frames)),
        "instruments": int(len(inst_ids)),
        "notes_generated": int(n_gen),
        "mse_vae": mse_vae,
        "mse_transformer": mse_tr,
        "pitch_acc_classifier": {"real": acc_real / len(frames),
                                 "reconstructed": acc_rec / len(frames),
                                 "generated": acc_gen / n_gen},
        "pitch_within_50c": within / n_gen,
        "pitch_within_50c_midi": within_midi / n_gen,
        "pitch_within_50c_codec": within_codec / n_gen,
        "pitch_misses": {k: v for k, v in sorted(misses.items()) if v[0]},
        "octave_errors": int(octave_errs),
        "pitch_median_abs_cents": float(np.median(abs_cents)),
        "pitch_yin": {"within_50c": yin_within / n_gen,
                      "within_50c_midi": yin_within_midi / n_gen,
                      "within_50c_codec": yin_within_codec / n_gen},
        "var_per_instrument": var_inst,
        "var_per_pitch": var_pitch,
        "family_knn_acc": knn,
        "codec_mrstft": float(np.mean(mrstft)),
        "mrstft_generated": float(np.mean(mrstft_gen)),
        "eval_s": round(time.time() - t0, 1),
    }


def report_markdown(r: dict[str, Any]) -> str:
    """A short human report of `evaluate`'s figures."""
    pa = r["pitch_acc_classifier"]
    py = r["pitch_yin"]
    lines = [
        f"# Evaluation of {r['model']}",
        "",
        f"Data: `{r['data']}`, split `{r['split']}`: {r['notes']} notes, {r['instruments']} "
        f"instruments; {r['notes_generated']} notes generated for the audio figures.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| MSE VAE (reconstruction) | {r['mse_vae']:.5f} |",
        f"| MSE Transformer (free-running) | {r['mse_transformer']:.5f} |",
        f"| pitch head accuracy real / reconstructed / generated | {pa['real']:.3f} / "
        f"{pa['reconstructed']:.3f} / {pa['generated']:.3f} |",
        f"| pitch within 50 cents of the original (PESTO; YIN) | {r['pitch_within_50c']:.3f}; "
        f"{py['within_50c']:.3f} |",
        f"| pitch within 50 cents of MIDI, octaves folded (PESTO; YIN) | "
        f"{r['pitch_within_50c_midi']:.3f} ({r['octave_errors']} octave errors); "
        f"{py['within_50c_midi']:.3f} |",
        f"| codec round trip within 50 cents of the original (the codec's ceiling; PESTO; "
        f"YIN) | {r['pitch_within_50c_codec']:.3f}; {py['within_50c_codec']:.3f} |",
        f"| median abs cents vs the original (YIN) | {r['pitch_median_abs_cents']:.1f} |",
        f"| latent variance per instrument / per pitch | {r['var_per_instrument']:.4f} / "
        f"{r['var_per_pitch']:.4f} |",
        f"| 5-NN family accuracy (instrument means) | {r['family_knn_acc']:.3f} |",
        f"| codec round trip MR-STFT | {r['codec_mrstft']:.3f} |",
        f"| generated note vs the original, MR-STFT | {r['mrstft_generated']:.3f} |",
        "",
    ]
    if r["pitch_misses"]:
        lines += ["Generated notes more than 50 cents from the original (PESTO), by "
                  "instrument (misses / notes):", ""]
        lines += [f"- {name}: {m} / {n}" for name, (m, n) in r["pitch_misses"].items()]
        lines.append("")
    return "\n".join(lines)


def run_eval(ns: Namespace) -> int:
    """`pgesam-live eval --model M --data DIR [--split S] [--json] [--report MD]`."""
    from pgesam_live.model.paths import write_problem  # noqa: PLC0415
    from pgesam_live.model.synth import resolve_device  # noqa: PLC0415

    problem = write_problem(ns.report) if ns.report else None
    if problem is not None:  # before the evaluation, not after it
        raise DataError(f"--report {ns.report}: {problem}; give a writable path")
    bundle = load_model(ns.model, device=resolve_device(ns.device))
    splits = ["train", "valid", "test"] if ns.split == "all" else [ns.split]
    result: dict[str, Any] = {}
    for sp in splits:
        if not read_split(ns.data, sp):
            raise DataError(f"{ns.data}: split {sp} has no notes; choose another --split or "
                            "rebuild the set (pgesam-live dataset soundfont ...)")
    r = evaluate(bundle, ns.data, ns.split, max_notes=ns.max_notes or DEFAULT_MAX_NOTES,
                 progress=not ns.json)
    result = r
    md = report_markdown(r)
    # By default next to the data, one file per model and split (a second model's report
    # does not overwrite the first's).
    report = (Path(ns.report) if ns.report else
              Path(ns.data) / f"eval-{ns.split}-{bundle.model_id}.md")
    if ns.report:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(md)
        except OSError as e:
            raise DataError(f"--report {report}: cannot write it ({e.strerror or e}); give a "
                            "writable path") from None
    else:
        try:
            report.write_text(md)
        except OSError:  # a read-only data folder (a mounted NSynth): here instead
            report = Path(report.name)
            report.write_text(md)
    if ns.json:
        print(json.dumps(result))
        print(f"report written to {report}", file=sys.stderr)
    else:
        print(md)
        print(f"(report written to {report})")
    return 0
