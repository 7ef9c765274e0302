"""Bounce each demo patch through the engine and check what issue 4 asks of a bounce.

For every patch in patches/: every scheduled note's first sample lands on its beat (the
voice pool's onset, read back from the output), notes that sound alone are in tune (YIN,
octave-folded, against the MIDI pitch), and two bounces are byte-identical.

    PGESAM_TORCH_THREADS=1 .venv/bin/python bench/check_patches.py [--seconds 12] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.app import OfflineRig  # noqa: E402
from pgesam_live.model import metrics  # noqa: E402
from pgesam_live.model.synth import Synth  # noqa: E402
from pgesam_live.settings import REPO_ROOT, Settings  # noqa: E402


def bounce(patch: Path, seconds: float, synth: Synth, out: Path) -> tuple[bytes, list, float]:
    rig = OfflineRig(Settings().replace(audio="offline", cache_spill=False), synth=synth)
    notes: list[tuple[float, int, np.ndarray]] = []
    sched = rig.engine.scheduler
    orig = sched._play_at

    def spy(start_s, pitches, velocity, length_beats, xy, seed, beat=None):  # type: ignore[no-untyped-def]
        if length_beats is None:
            end_s = start_s + synth.duration_s
        else:
            b0 = sched.tempo.s_to_beat(start_s) if beat is None else beat
            end_s = sched.tempo.beat_to_s(b0 + length_beats) + 0.03  # + the release fade
        for p in pitches:
            notes.append((start_s, int(p), end_s))
        return orig(start_s, pitches, velocity, length_beats, xy, seed, beat)

    sched._play_at = spy  # type: ignore[method-assign]
    t = time.perf_counter()
    rig.submit_or_fail(f"load {patch}", "patch", at_s=0.0)
    rig.run_until(seconds)
    wall = time.perf_counter() - t
    rig.save(out)
    data = out.read_bytes()
    audio = rig.audio.render_to_array().mean(axis=1)
    rig.close()
    return data, [(s, p, e, audio) for s, p, e in notes], wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    synth = Synth.load(ns.model, device="cpu")
    sr = synth.sample_rate
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for patch in sorted((REPO_ROOT / "patches").glob("*.yaml")):
            a, notes, wall = bounce(patch, ns.seconds, synth, Path(tmp) / "a.wav")
            b, _, _ = bounce(patch, ns.seconds, synth, Path(tmp) / "b.wav")
            audio = notes[0][3] if notes else np.zeros(1)
            # A note is isolated when no other note sounds from 50 ms before it to its end:
            # its onset is then the first sample of the output above the noise floor, and its
            # pitch is read alone (YIN, octave-folded, against the MIDI pitch).
            onset_err_ms, tuned = [], []
            for j, (s, p, e, _) in enumerate(notes):
                i0, i1 = round(s * sr), min(round(e * sr), len(audio))
                if i1 - i0 < int(0.08 * sr) or i0 < int(0.05 * sr):
                    continue
                if any(k != j and s2 < e and e2 > s - 0.05 for k, (s2, _, e2, _) in
                       enumerate(notes)):
                    continue
                seg = np.abs(audio[i0:i1])
                if seg.max() <= 0:
                    continue
                first = int(np.flatnonzero(seg > 1e-3 * seg.max())[0])
                onset_err_ms.append(1000 * first / sr)
                f = 440.0 * 2 ** ((p - 69) / 12)
                g = metrics.track_pitch(audio[i0:i1], sr, f / 2.3, f * 2.3)
                if g > 0:
                    c = metrics.cents(g, f)
                    tuned.append(abs((c + 600) % 1200 - 600))
            report[patch.name] = {
                "notes": len(notes), "identical": a == b, "bounce_s": round(wall, 2),
                "isolated_onsets": len(onset_err_ms),
                "onset_err_ms_max": round(max(onset_err_ms), 3) if onset_err_ms else None,
                "isolated_tracked": len(tuned),
                "in_tune_50c": round(float(np.mean(np.array(tuned) <= 50)), 3) if tuned else None,
                "median_abs_cents": round(float(np.median(tuned)), 1) if tuned else None,
            }
    if ns.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
