"""Codec quality on General MIDI notes: MR-STFT, pitch and attack of the resynthesis.

Renders 4 s notes (3 s held + 1 s release, velocity 100) of programs across the 11 NSynth
families from GM soundfonts, encodes and decodes each with a codec, and reports:
- MR-STFT distance (pgesam_live.model.metrics) mean / p90 / worst per family and overall;
- the share of notes whose resynthesis is within 25 cents of the original (YIN on both);
- for plucked and struck families (guitar, keyboard, mallet, bass): the half-peak time of the
  resynthesis minus the original's, share within 15 ms, worst;
- encode and decode seconds (one note; a batch of 25 notes decoded at once).

Usage: .venv/bin/python bench/codec_quality.py [--codec harmonic] [--no-hint]
       [--pitches 36:84:6] [--soundfont PATH ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgesam_live.model.codec import HarmonicCodec, get_codec  # noqa: E402
from pgesam_live.model.metrics import (  # noqa: E402
    cents,
    half_peak_time_s,
    mrstft_distance,
    track_pitch,
)
from pgesam_live.model.soundfont import GM_FAMILY, render_note  # noqa: E402

# Two or more programs per NSynth family (GM program numbers, 0-based).
PROGRAMS: dict[int, str] = {
    33: "bass: finger bass", 38: "bass: synth bass 1",
    56: "brass: trumpet", 61: "brass: brass section",
    73: "flute: flute", 71: "reed: clarinet",
    24: "guitar: nylon", 27: "guitar: clean electric",
    0: "keyboard: grand piano", 4: "keyboard: electric piano",
    11: "mallet: vibraphone", 12: "mallet: marimba",
    19: "organ: church organ", 16: "organ: drawbar organ",
    65: "reed: alto sax", 40: "string: violin", 48: "string: ensemble",
    81: "synth_lead: sawtooth", 89: "synth_lead: warm pad",
    52: "vocal: choir aahs", 75: "flute: pan flute",
}
PLUCKED = ("guitar", "keyboard", "mallet", "bass")
DEFAULT_SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2",
                      "/usr/share/sounds/sf3/MuseScore_General.sf3")


def midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def parse_range(text: str) -> list[int]:
    lo, hi, step = (int(v) for v in text.split(":"))
    return list(range(lo, hi + 1, step))


def summarise(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"n": int(a.size), "mean": float(a.mean()), "p90": float(np.percentile(a, 90)),
            "worst": float(a.max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codec", default="harmonic")
    ap.add_argument("--weights", default=None, help="EnCodec weights (encodec codec only)")
    ap.add_argument("--no-hint", action="store_true", help="encode without the f0 hint")
    ap.add_argument("--pitches", default="36:84:6", help="lo:hi:step MIDI (default 36:84:6)")
    ap.add_argument("--soundfont", action="append", default=None)
    ap.add_argument("--programs", default=None, help="comma-separated GM programs")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    codec = get_codec(args.codec, **({"weights": args.weights} if args.codec == "encodec"
                                     else {}))
    sr = codec.sample_rate
    pitches = parse_range(args.pitches)
    programs = ([int(p) for p in args.programs.split(",")] if args.programs
                else list(PROGRAMS))
    soundfonts = [s for s in (args.soundfont or DEFAULT_SOUNDFONTS) if Path(s).is_file()]
    if not soundfonts:
        print("no soundfont found: apt-get install fluid-soundfont-gm", file=sys.stderr)
        return 1

    rows: list[dict[str, object]] = []
    enc_s: list[float] = []
    dec_s: list[float] = []
    frames_for_batch: list[torch.Tensor] = []
    for sf in soundfonts:
        for prog in programs:
            family = GM_FAMILY.get(prog, ("?", ""))[0]
            for pitch in pitches:
                x = render_note(sf, prog, pitch, sample_rate=sr)
                if np.abs(x).max() < 1e-4:
                    continue  # the soundfont has no sample there
                w = torch.from_numpy(x)[None]
                t0 = time.perf_counter()
                if isinstance(codec, HarmonicCodec) and not args.no_hint:
                    fr = codec.encode(w, f0_hint_hz=midi_hz(pitch))
                else:
                    fr = codec.encode(w)
                t1 = time.perf_counter()
                with torch.no_grad():
                    y = codec.decode(fr)[0].numpy()
                t2 = time.perf_counter()
                enc_s.append(t1 - t0)
                dec_s.append(t2 - t1)
                if len(frames_for_batch) < 25:
                    frames_for_batch.append(fr)
                d = mrstft_distance(x, y)
                # Search a wide range around the key (organ stops an octave down, etc.).
                fmin, fmax = midi_hz(pitch) / 2.5, min(midi_hz(pitch) * 2.5, sr / 2 - 100)
                try:
                    c = cents(track_pitch(y, sr, fmin, fmax), track_pitch(x, sr, fmin, fmax))
                except Exception:  # a silent resynthesis counts as a pitch miss
                    c = math.inf
                attack_ms = 1000.0 * (half_peak_time_s(y, sr) - half_peak_time_s(x, sr))
                rows.append({"soundfont": Path(sf).stem, "program": prog, "family": family,
                             "pitch": pitch, "mrstft": d, "cents": c, "attack_ms": attack_ms})
                print(f"{Path(sf).stem[:10]:10s} {prog:3d} {family:10s} {pitch:3d}  "
                      f"mrstft {d:.3f}  cents {c:+7.2f}  attack {attack_ms:+6.1f} ms",
                      flush=True)

    batch = torch.cat(frames_for_batch)
    with torch.no_grad():
        codec.decode(batch)
        t0 = time.perf_counter()
        codec.decode(batch)
        batch_s = time.perf_counter() - t0

    report: dict[str, object] = {"codec": args.codec, "hint": not args.no_hint,
                                 "soundfonts": [Path(s).name for s in soundfonts],
                                 "programs": programs, "pitches": pitches}
    fams = sorted({str(r["family"]) for r in rows})
    per_family = {f: summarise([float(r["mrstft"]) for r in rows if r["family"] == f])  # type: ignore[arg-type]
                  for f in fams}
    report["mrstft_per_family"] = per_family
    report["mrstft_per_soundfont"] = {
        Path(s).stem: summarise([float(r["mrstft"]) for r in rows  # type: ignore[arg-type]
                                 if r["soundfont"] == Path(s).stem]) for s in soundfonts}
    report["mrstft"] = summarise([float(r["mrstft"]) for r in rows])  # type: ignore[arg-type]
    cs = np.array([abs(float(r["cents"])) for r in rows])  # type: ignore[arg-type]
    report["pitch_within_25_cents"] = float((cs <= 25).mean())
    report["pitch_abs_cents_p90"] = float(np.percentile(cs, 90))
    misses = [(r["soundfont"], r["program"], r["pitch"], round(float(r["cents"]), 1))  # type: ignore[arg-type]
              for r in rows if abs(float(r["cents"])) > 25]  # type: ignore[arg-type]
    report["pitch_misses"] = misses
    att = np.array([float(r["attack_ms"]) for r in rows if r["family"] in PLUCKED])  # type: ignore[arg-type]
    report["plucked_attack"] = {
        "n": int(att.size), "within_15_ms": float((np.abs(att) <= 15).mean()),
        "abs_ms_p90": float(np.percentile(np.abs(att), 90)), "worst_ms": float(
            att[np.argmax(np.abs(att))])} if att.size else {}
    report["encode_s_per_note"] = float(np.median(enc_s))
    report["decode_s_per_note"] = float(np.median(dec_s))
    report["decode_s_batch_25"] = batch_s
    report["torch_threads"] = args.threads

    print()
    print(f"{'family':12s} {'n':>4s} {'mean':>6s} {'p90':>6s} {'worst':>6s}")
    for f, s in per_family.items():
        print(f"{f:12s} {s['n']:4d} {s['mean']:6.3f} {s['p90']:6.3f} {s['worst']:6.3f}")
    for name, s in report["mrstft_per_soundfont"].items():  # type: ignore[attr-defined]
        print(f"{name[:12]:12s} {s['n']:4d} {s['mean']:6.3f} {s['p90']:6.3f} {s['worst']:6.3f}")
    o = report["mrstft"]
    print(f"{'overall':12s} {o['n']:4d} {o['mean']:6.3f} {o['p90']:6.3f} "  # type: ignore[index]
          f"{o['worst']:6.3f}")  # type: ignore[index]
    print(f"pitch within 25 cents: {100 * report['pitch_within_25_cents']:.1f} %  "  # type: ignore[operator]
          f"(p90 |cents| {report['pitch_abs_cents_p90']:.1f}); misses: {misses}")
    print(f"plucked attack: {report['plucked_attack']}")
    print(f"encode {report['encode_s_per_note']:.3f} s/note, decode "
          f"{report['decode_s_per_note']:.4f} s/note, batch of 25 {batch_s:.3f} s "
          f"({args.threads} torch thread(s))")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
