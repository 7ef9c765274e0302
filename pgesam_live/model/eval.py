"""The authors' evaluation plus an independent pitch tracker: `pgesam-live eval`.

Figures (JSON keys): mse_vae, mse_transformer, pitch_acc_classifier {real, reconstructed,
generated}, pitch_within_50c, pitch_within_50c_midi, octave_errors, pitch_within_50c_codec (the
codec's own round trip against the original: the ceiling for any model on that codec),
pitch_misses (instrument -> [misses, notes]) (these by PESTO), pitch_median_abs_cents (by YIN),
pitch_yin {within_50c, within_50c_midi, within_50c_codec} (the 50-cent tests by YIN),
var_per_instrument, var_per_pitch, family_knn_acc, codec_mrstft, mrstft_generated (generated
notes against their originals, same distance), identity_nn (+ _codec, _chance), envelope_db
(+ _codec), map_spread {level_2_5s_ratio, centroid_ratio, neighbour_distance_db,
two_step_distance_db, neighbour_closer_share, continuous, level_2_5s_ratio_nearest,
centroid_ratio_nearest (the ceiling: the same spread over the originals of the training
instrument nearest each cell), ...}, plus counts. A short markdown
report goes next to the JSON (or to --report).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgesam_live.errors import CodecError, ConfigError, DataError
from pgesam_live.model import metrics
from pgesam_live.model.checkpoints import ModelBundle, load_model
from pgesam_live.model.data import (
    FAMILIES,
    FrameSet,
    instrument_means,
    load_audio,
    load_frames,
    notes_duration_s,
    read_split,
)
from pgesam_live.model.soundfont import NOTE_HOLD_S  # the data set's note-off: release_db's

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
    duration_s = notes_duration_s(n_tr, codec.frame_rate_hz)  # as training reads them
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
    from tqdm import tqdm  # noqa: PLC0415

    def generate(points: torch.Tensor, what: str) -> tuple[torch.Tensor, np.ndarray]:
        """Notes idx at points [len(idx), 2] -> their frames [n, T, D] and audio [n, N]."""
        gen_frames, gen_audio = [], []
        # A progress bar on stderr when it is a terminal (disable=None): the slow part.
        for sl in tqdm(_batches(len(idx), 25), desc=f"eval: generating {what}", unit="batch",
                       disable=None, dynamic_ncols=True, mininterval=1.0):
            sel = idx[sl]
            g = synth.finish_frames(tr.generate(points[sl].to(device), fs.pitch[sel].to(device),
                                                n_frames=frames.shape[1]),
                                    fs.pitch[sel].to(device), points[sl].to(device))
            gen_frames.append(g.float().cpu())
            gen_audio.append(synth.decode_frames(g, seed=seed))
        return torch.cat(gen_frames), np.concatenate(gen_audio)

    # At each note's own point (the VAE's mean of that note: the paper's condition), and at
    # its instrument's point (the mean of the instrument's notes in this split: where a
    # performer plays the instrument, as the training points are), notes scattering about
    # their instrument's point farther than other instruments' points lie.
    gen, audio = generate(mu_all[idx], "at the notes' points")
    inst_points = instrument_means(mu_all, fs.instrument.long())
    gen_inst, audio_inst = generate(inst_points[idx], "at the instruments' points")
    mse_tr = float(((gen - frames[idx]) ** 2).mean())
    acc_gen = 0
    for sl in _batches(len(gen), 64):
        logits = vae.encode(gen[sl, :n_vae].to(device))[2]
        acc_gen += int((logits.argmax(-1).cpu() == pitch_idx[idx[sl]]).sum())

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
    mrstft, mrstft_gen, mrstft_inst = [], [], []
    for j in range(min(len(idx), 60)):
        n = min(len(originals[j]), rt.shape[1], audio.shape[1])
        mrstft.append(metrics.mrstft_distance(originals[j][:n], rt[j, :n]))
        mrstft_gen.append(metrics.mrstft_distance(originals[j][:n], audio[j, :n]))
        mrstft_inst.append(metrics.mrstft_distance(originals[j][:n], audio_inst[j, :n]))

    # What the map changes (the sound issue's figures): is a generated note nearest to its own
    # instrument among every evaluated instrument's original at its pitch, and does its level
    # follow the original's over time. The codec's round trip gives the ceiling of both.
    cands = _candidates(fs, idx, sr, audio.shape[1])
    sound = _identity_and_envelope(fs, idx, originals, audio, rt, sr, cands)
    at_inst = _identity_and_envelope(fs, idx, originals, audio_inst, rt, sr, cands)
    sound_inst = {"identity_nn": at_inst["identity_nn"], "envelope_db": at_inst["envelope_db"],
                  "release_db": at_inst["release_db"],
                  "mrstft_generated": float(np.mean(mrstft_inst)),
                  "mse_transformer": float(((gen_inst - frames[idx]) ** 2).mean())}

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
        # the training instruments' spectra read at render time (model/memory.py), if any
        "spectral_memory": (None if bundle.memory is None else
                            {"source": bundle.memory.source, "reach": bundle.memory.reach,
                             "dynamics": bundle.memory.dynamics is not None}),
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
        **sound,
        "at_instrument_point": sound_inst,
        "map_spread": map_spread(bundle, synth, data_dir, split, seed=seed),
        "eval_s": round(time.time() - t0, 1),
    }


Candidates = dict[int, list[tuple[str, np.ndarray]]]  # pitch -> (identity key, spectrogram)


def _candidates(fs: FrameSet, idx: np.ndarray, sr: int, n_samples: int) -> Candidates:
    """Every original of the split at the pitches of notes `idx`, as identity_nn compares
    with: its identity key and log-band spectrogram, by pitch."""
    keys = [metrics.identity_key(fs.instrument_names[int(i)]) for i in fs.instrument]
    pitches = fs.pitch.numpy()
    wanted = {int(pitches[i]) for i in idx}
    cands: Candidates = {p: [] for p in wanted}
    for k, note in enumerate(fs.notes):
        p = int(pitches[k])
        if p in wanted:
            wave = load_audio(note.path, sr, n_samples)
            cands[p].append((keys[k], metrics.log_band_spectrogram(wave, sr)))
    return cands


def _identity_and_envelope(fs: FrameSet, idx: np.ndarray, originals: list[np.ndarray],
                           audio: np.ndarray, rt: np.ndarray, sr: int,
                           cands: Candidates | None = None) -> dict[str, Any]:
    """identity_nn (+ its codec ceiling and chance level) and envelope_db (+ codec) for the
    generated notes `audio[j]` of notes `idx[j]`, against all originals of the split
    (`cands`: _candidates' answer, when the caller has it)."""
    keys = [metrics.identity_key(fs.instrument_names[int(i)]) for i in fs.instrument]
    pitches = fs.pitch.numpy()
    if cands is None:
        cands = _candidates(fs, idx, sr, audio.shape[1])
    own_gen, own_rt, chance, env_gen, env_rt = [], [], [], [], []
    rel_gen: list[float] = []
    rel_rt: list[float] = []
    for j, i in enumerate(idx):
        key, c = keys[int(i)], cands[int(pitches[i])]
        own_gen.append(metrics.nearest_is_own(metrics.log_band_spectrogram(audio[j], sr), key, c))
        own_rt.append(metrics.nearest_is_own(metrics.log_band_spectrogram(rt[j], sr), key, c))
        chance.append(sum(k == key for k, _ in c) / max(1, len(c)))
        env_gen.append(metrics.envelope_error_db(originals[j], audio[j], sr))
        env_rt.append(metrics.envelope_error_db(originals[j], rt[j], sr))
        for out, wave in ((rel_gen, audio[j]), (rel_rt, rt[j])):
            err = metrics.release_error_db(originals[j], wave, sr, NOTE_HOLD_S)
            if err is not None:
                out.append(err)
    return {"identity_nn": float(np.mean(own_gen)), "identity_nn_codec": float(np.mean(own_rt)),
            "identity_nn_chance": float(np.mean(chance)),
            "envelope_db": float(np.mean(env_gen)), "envelope_db_codec": float(np.mean(env_rt)),
            "release_db": float(np.median(rel_gen)) if rel_gen else None,
            "release_db_codec": float(np.median(rel_rt)) if rel_rt else None}


MAP_GRID = 5
MAP_PITCH = 60  # C4


def _grid_note_figures(waves: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Level at 2.5 s (dB re peak) and spectral centroid (Hz) of each note [B, N]."""
    level = np.array([metrics.levels_db(w, sr, (2.5,))[0] for w in waves])
    centroid = np.array([metrics.spectral_centroid_hz(w, sr) for w in waves])
    return level, centroid


def nearest_originals(grid: np.ndarray, points: list[dict[str, Any]], ref_names: list[str]
                      ) -> np.ndarray | None:
    """For each grid cell [G, 2], the index into ref_names of the original of the training
    instrument nearest to it (points: the model's training points {name, x, y}) among those
    the reference has; the first original of an instrument with several. None when no
    training instrument is in the reference (another data set)."""
    first: dict[str, int] = {}
    for i, name in enumerate(ref_names):
        first.setdefault(name, i)
    have = [p for p in points if p["name"] in first]
    if not have:
        return None
    xy = np.array([[p["x"], p["y"]] for p in have], dtype=np.float64)
    d2 = ((grid[:, None, :].astype(np.float64) - xy[None]) ** 2).sum(-1)
    return np.array([first[have[int(j)]["name"]] for j in d2.argmin(1)])


def map_spread(bundle: ModelBundle, synth: Any, data_dir: str | Path, split: str,
               seed: int = 0) -> dict[str, Any]:
    """How much, and how smoothly, the map changes the sound at C4.

    A 5 x 5 grid spanning the training points' bounding box: the spread (std) of the level at
    2.5 s and of the spectral centroid, each over the spread of the same figure across the
    originals at C4 of the data set's training split (the instruments the map was made from;
    the evaluated split if there is no training split): 1 is the originals' variety, near 0 a
    map that changes nothing. Continuity: the mean log-band spectrogram distance between grid
    neighbours (one step) and between cells two steps apart on the same row or column, and the
    share of (cell, +1, +2) triples where the neighbour is the closer one.
    """
    pts = bundle.training_points
    if not pts:
        return {"error": "the model carries no training points"}
    xy = np.array([[p["x"], p["y"]] for p in pts], dtype=np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    gx = np.linspace(lo[0], hi[0], MAP_GRID)
    gy = np.linspace(lo[1], hi[1], MAP_GRID)
    grid = np.array([[x, y] for y in gy for x in gx], dtype=np.float32)  # row-major in y
    p_lo, p_hi = bundle.pitch_range
    pitch = min(max(MAP_PITCH, p_lo), p_hi)
    waves = synth.render(grid, [pitch] * len(grid), seed=seed)
    sr = synth.sample_rate
    level, centroid = _grid_note_figures(waves, sr)
    ref_split = "train" if read_split(data_dir, "train") else split
    ref = [n for n in read_split(data_dir, ref_split) if n.pitch == pitch]
    ref_waves = np.stack([load_audio(n.path, sr, waves.shape[1]) for n in ref]) if ref else None
    out: dict[str, Any] = {"grid": MAP_GRID, "pitch": pitch,
                           "x_range": [float(lo[0]), float(hi[0])],
                           "y_range": [float(lo[1]), float(hi[1])],
                           "reference": f"{ref_split} split, {len(ref)} originals"}
    if ref_waves is not None and len(ref_waves) > 1:
        r_level, r_centroid = _grid_note_figures(ref_waves, sr)
        out["level_2_5s_ratio"] = float(level.std() / max(r_level.std(), 1e-9))
        out["centroid_ratio"] = float(centroid.std() / max(r_centroid.std(), 1e-9))
        near = nearest_originals(grid, pts, [n.instrument_str for n in ref])
        if near is not None:  # what a map playing its nearest instrument, unblended, spreads
            n_level, n_centroid = r_level[near], r_centroid[near]
            out["level_2_5s_ratio_nearest"] = float(n_level.std() / max(r_level.std(), 1e-9))
            out["centroid_ratio_nearest"] = float(n_centroid.std()
                                                  / max(r_centroid.std(), 1e-9))
    out["level_2_5s_std_db"] = float(level.std())
    out["centroid_std_hz"] = float(centroid.std())
    specs = [metrics.log_band_spectrogram(w, sr) for w in waves]
    g = MAP_GRID

    def spec(r: int, c: int) -> np.ndarray:
        return specs[r * g + c]

    d1, d2, closer = [], [], []
    for r in range(g):
        for c in range(g):
            for dr, dc in ((0, 1), (1, 0)):
                if r + 2 * dr < g and c + 2 * dc < g:
                    a = metrics.spectrogram_distance(spec(r, c), spec(r + dr, c + dc))
                    b = metrics.spectrogram_distance(spec(r, c), spec(r + 2 * dr, c + 2 * dc))
                    d1.append(a)
                    d2.append(b)
                    closer.append(a < b)
    out["neighbour_distance_db"] = float(np.mean(d1))
    out["two_step_distance_db"] = float(np.mean(d2))
    out["neighbour_closer_share"] = float(np.mean(closer))
    out["continuous"] = bool(np.mean(d1) < np.mean(d2))
    return out


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
        f"| identity_nn: nearest original is its own (codec ceiling; chance) | "
        f"{r['identity_nn']:.3f} ({r['identity_nn_codec']:.3f}; {r['identity_nn_chance']:.3f}) |",
        f"| envelope_db: level error at 0.5/1.5/2.5 s (codec) | {r['envelope_db']:.1f} dB "
        f"({r['envelope_db_codec']:.1f} dB) |",
    ]
    if r.get("release_db") is not None:
        lines.append(f"| release_db: largest level error over the 300 ms after the note-off at "
                     f"3 s, median (codec) | {r['release_db']:.1f} dB "
                     f"({r['release_db_codec']:.1f} dB) |")
    ai = r.get("at_instrument_point") or {}
    if ai:
        lines.append(f"| at the instruments' points: identity_nn / envelope_db / MR-STFT | "
                     f"{ai['identity_nn']:.3f} / {ai['envelope_db']:.1f} dB / "
                     f"{ai['mrstft_generated']:.3f} |")
    ms = r.get("map_spread") or {}
    if "level_2_5s_ratio" in ms:
        lines.append(f"| map_spread at C4: level at 2.5 s / centroid, re the originals | "
                     f"{ms['level_2_5s_ratio']:.2f} / {ms['centroid_ratio']:.2f} |")
    if "centroid_ratio_nearest" in ms:
        lines.append(f"| the same for the originals of the instrument nearest each cell (a "
                     f"ceiling) | {ms['level_2_5s_ratio_nearest']:.2f} / "
                     f"{ms['centroid_ratio_nearest']:.2f} |")
    if "neighbour_distance_db" in ms:
        lines.append(f"| map continuity: neighbour / two-step distance (closer share) | "
                     f"{ms['neighbour_distance_db']:.1f} / {ms['two_step_distance_db']:.1f} dB "
                     f"({ms['neighbour_closer_share']:.2f}) |")
    lines.append("")
    if r["pitch_misses"]:
        lines += ["Generated notes more than 50 cents from the original (PESTO), by "
                  "instrument (misses / notes):", ""]
        lines += [f"- {name}: {m} / {n}" for name, (m, n) in r["pitch_misses"].items()]
        lines.append("")
    return "\n".join(lines)


def set_guidance(bundle: ModelBundle, guidance: float) -> None:
    """Render `bundle` with another guidance scale (parallel decoder only)."""
    tr = bundle.transformer
    if not tr.cfg.parallel:
        raise ConfigError("--guidance is for the parallel decoder; this model is "
                          f"{tr.cfg.decoder}: leave --guidance out")
    tr.cfg = dataclasses.replace(tr.cfg, guidance=guidance)


def set_tune(bundle: ModelBundle, tune: bool) -> None:
    """Render `bundle` with its f0 tuning on or off (TransformerConfig.tune_f0)."""
    tr = bundle.transformer
    tr.cfg = dataclasses.replace(tr.cfg, tune_f0=tune)


def set_debuzz(bundle: ModelBundle, debuzz: bool) -> None:
    """Render `bundle` with its loudness de-buzzing on or off (TransformerConfig.debuzz)."""
    tr = bundle.transformer
    tr.cfg = dataclasses.replace(tr.cfg, debuzz=debuzz)


def _run_codec_only(ns: Namespace) -> int:
    """`eval --codec-only NAME [NAME ...]`: the codecs' own round trips, no model."""
    from pgesam_live.model import codec_eval  # noqa: PLC0415
    from pgesam_live.model.codec import CODEC_NAMES  # noqa: PLC0415

    bad = [n for n in ns.codec_only if n not in CODEC_NAMES]
    if bad:
        raise ConfigError(f"--codec-only {bad[0]}: unknown codec; choose from "
                          f"{', '.join(CODEC_NAMES)}")
    if ns.split == "all":
        raise ConfigError("--codec-only measures one split: choose --split train, valid or test")
    r = codec_eval.evaluate_codecs(list(ns.codec_only), ns.data, ns.split,
                                   max_notes=ns.max_notes or codec_eval.DEFAULT_MAX_NOTES,
                                   progress=not ns.json)
    md = codec_eval.report_markdown(r)
    if ns.report:
        try:
            Path(ns.report).parent.mkdir(parents=True, exist_ok=True)
            Path(ns.report).write_text(md)
        except OSError as e:
            raise DataError(f"--report {ns.report}: cannot write it ({e.strerror or e}); give "
                            "a writable path") from None
    print(json.dumps(r) if ns.json else md)
    return 0


def run_eval(ns: Namespace) -> int:
    """`pgesam-live eval --model M --data DIR [--split S] [--json] [--report MD]`."""
    from pgesam_live.model.paths import write_problem  # noqa: PLC0415
    from pgesam_live.model.synth import resolve_device  # noqa: PLC0415

    problem = write_problem(ns.report) if ns.report else None
    if problem is not None:  # before the evaluation, not after it
        raise DataError(f"--report {ns.report}: {problem}; give a writable path")
    if getattr(ns, "codec_only", None):
        return _run_codec_only(ns)
    bundle = load_model(ns.model, device=resolve_device(ns.device))
    if getattr(ns, "guidance", None) is not None:
        set_guidance(bundle, float(ns.guidance))
    if getattr(ns, "tune", None) is not None:
        set_tune(bundle, ns.tune == "on")
    if getattr(ns, "debuzz", None) is not None:
        set_debuzz(bundle, ns.debuzz == "on")
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
