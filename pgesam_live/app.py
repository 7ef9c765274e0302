"""Wiring: builds the engine from settings and runs the front ends.

`run_*` functions are the CLI's subcommands (see cli.py). Nothing musical happens here: the
engine (core.py) is the one door; the front ends translate input into its commands.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np

from pgesam_live.errors import PgesamError
from pgesam_live.settings import Settings


def settings_from_args(ns: Namespace) -> Settings:
    """Defaults < environment < command line."""
    s = Settings.from_env()
    return s.replace(
        model=getattr(ns, "model", None),
        device=getattr(ns, "device", None),
        audio=getattr(ns, "audio", None),
        osc_host=getattr(ns, "osc_host", None),
        osc_port=getattr(ns, "osc_port", None),
        midi=getattr(ns, "midi", None),
        sample_rate=getattr(ns, "sample_rate", None),
        lookahead_s=getattr(ns, "lookahead", None),
    )


def check_out_path(out: str, suffixes: tuple[str, ...]) -> Path:
    """An output file the command can write: not a folder, a known kind by its suffix
    (checked before any work is done)."""
    p = Path(out).expanduser()
    if p.is_dir() or out.endswith(("/", "\\")):
        raise PgesamError(f"--out {out} is a folder: give a file name, e.g. "
                          f"{p / ('out' + suffixes[0])}")
    if p.suffix.lower() not in suffixes:
        raise PgesamError(f"--out {out}: this writes {' or '.join(suffixes)} files; name it "
                          f"{p.with_suffix(suffixes[0]).name}")
    if p.parent.exists() and not p.parent.is_dir():
        raise PgesamError(f"--out {out}: {p.parent} is not a folder")
    _probe_writable(p, out)
    return p


def _probe_writable(p: Path, out: str) -> None:
    """Fail now, not after the work, where `p` cannot be written."""
    from pgesam_live.model.paths import write_problem  # noqa: PLC0415

    problem = write_problem(p)
    if problem is not None:
        raise PgesamError(f"--out {out}: {problem}: choose a writable path")


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio ([N] or [N, C]) as 16-bit PCM; creates the folder."""
    import soundfile as sf  # noqa: PLC0415

    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return p


def run_note(ns: Namespace) -> int:
    """`pgesam-live note X Y PITCH --out WAV [--velocity V]`: one note through the model."""
    from pgesam_live.cache import repitch  # noqa: PLC0415
    from pgesam_live.model.synth import Synth, resolve_device  # noqa: PLC0415
    from pgesam_live.notes import (  # noqa: PLC0415
        note_to_midi,
        playable_range,
        range_text,
        rendered_pitch,
    )
    from pgesam_live.voices import velocity_gain  # noqa: PLC0415
    from pgesam_live.worker import normalise_peak  # noqa: PLC0415

    s = settings_from_args(ns)
    out_path = check_out_path(ns.out, (".wav",))
    pitch = note_to_midi(ns.pitch)
    if not 0.0 <= ns.velocity <= 1.0:
        raise PgesamError(f"velocity {ns.velocity} is out of range 0..1")
    for name, v in (("x", ns.x), ("y", ns.y)):
        if not np.isfinite(v) or abs(v) > 1.5:
            raise PgesamError(f"{name} = {v} is outside the map: use -1.5..1.5")
    synth = Synth.load(s.model, device=resolve_device(s.device))
    model_range = (int(synth.pitch_range[0]), int(synth.pitch_range[1]))
    lo, hi = playable_range(model_range)
    if not lo <= pitch <= hi:
        raise PgesamError(f"pitch {pitch} is outside what the model plays: "
                          f"{range_text(model_range)}")
    rp = rendered_pitch(pitch, model_range)
    audio = synth.render(np.array([[ns.x, ns.y]], np.float32), np.array([rp]), seed=ns.seed)
    audio = normalise_peak(audio)[0]
    if rp != pitch:  # beyond the model's range: its edge note re-pitched, as the engine does
        audio = repitch(audio, float(pitch - rp))
    audio = audio * velocity_gain(ns.velocity)
    sr = synth.sample_rate
    if s.sample_rate and s.sample_rate != sr:
        from pgesam_live.audio import resample  # noqa: PLC0415

        audio, sr = resample(audio, sr, s.sample_rate), s.sample_rate
    out = write_wav(out_path, audio, sr)
    print(f"{out}: pitch {pitch} at ({ns.x:+.2f}, {ns.y:+.2f}), {len(audio) / sr:.2f} s, "
          f"{sr} Hz, model {synth.model_id}")
    return 0


def run_doctor(ns: Namespace) -> int:
    """`pgesam-live doctor`: what works on this machine and what to do about what doesn't."""
    s = settings_from_args(ns)
    rows: list[tuple[str, bool, str]] = []

    # Audio.
    try:
        from pgesam_live.audio import portaudio_output_available  # noqa: PLC0415

        ok, why = portaudio_output_available()
        rows.append(("audio", ok, f"portaudio: {why}" if ok else
                     f"{why}: `--audio auto` records to sessions/<stamp>.wav instead (or run "
                     f"jackd -d dummy and use --audio jack)"))
    except Exception as e:  # doctor reports, it never crashes
        rows.append(("audio", False, f"pyo unavailable ({e}): run `make setup`"))
    rows.append(("jack", shutil.which("jackd") is not None,
                  "jackd found" if shutil.which("jackd") else
                  "jackd not installed (optional: apt-get install jackd2)"))

    # Torch device and model.
    try:
        import torch  # noqa: PLC0415

        cuda = torch.cuda.is_available()
        wants_cuda = str(s.device).strip().lower().startswith("cuda")
        rows.append(("torch", cuda or not wants_cuda, f"torch {torch.__version__}; "
                     + (f"CUDA: {torch.cuda.get_device_name(0)}" if cuda else
                        "CPU only: --device cuda needs a GPU; use --device cpu or auto"
                        if wants_cuda else
                        "CPU only (the model renders on the CPU; --device cuda needs a GPU)")))
    except Exception as e:
        rows.append(("torch", False, f"torch unavailable ({e}): run `make setup`"))
    try:
        from pgesam_live.model.checkpoints import (  # noqa: PLC0415
            read_model_payload_verified,
            resolve_model,
        )

        path = resolve_model(s.model)
        # Checksums, format, a packed file's base.
        _, model_id, verified = read_model_payload_verified(path)
        how = ("verified" if verified else
               "reads, but cannot be verified: an older file without a checksum inside, "
               "renamed: keep its <name>-<hash>.pt name so that the hash is checked")
        rows.append(("model", True, f"{path} ({path.stat().st_size / 1e6:.1f} MB, "
                                    f"{model_id}): {how}"))
    except PgesamError as e:
        rows.append(("model", False, str(e)))

    # OSC port.
    from pgesam_live.osc import osc_port_problem  # noqa: PLC0415

    problem = osc_port_problem(s.osc_host, s.osc_port)
    rows.append(("osc", problem is None, problem or f"udp {s.osc_host}:{s.osc_port} is free"))

    # MIDI.
    try:
        from pgesam_live.midi import list_ports  # noqa: PLC0415

        ins, err = list_ports()
        if err:
            rows.append(("midi", False, err))
        else:
            rows.append(("midi", bool(ins), ", ".join(ins) if ins else
                         "no MIDI inputs (plug a keyboard in, then --midi auto)"))
    except Exception as e:
        rows.append(("midi", False, f"MIDI unavailable ({e})"))

    # Soundfont data set tooling.
    try:
        from pgesam_live.model.soundfont import _fluidsynth  # noqa: PLC0415

        _fluidsynth()
        sf2 = sorted(str(p) for p in Path("/usr/share/sounds").glob("sf*/*.sf[23]"))
        rows.append(("soundfonts", bool(sf2), ", ".join(sf2) if sf2 else
                     "libfluidsynth found but no GM soundfont: apt-get install fluid-soundfont-gm"))
    except PgesamError as e:
        rows.append(("soundfonts", False, str(e)))

    width = max(len(r[0]) for r in rows)
    for name, ok, text in rows:
        print(f"{'ok ' if ok else '-- '} {name:<{width}}  {text}")
    # The instrument cannot start without these (torch: the device asked for); the rest have
    # fallbacks (record mode) or are optional. Exit 1 tells a script so.
    blocking = [name for name, ok, _ in rows if not ok and name in ("torch", "model", "osc")]
    if blocking:
        print(f"pgesam-live cannot start until {' and '.join(blocking)} "
              f"{'is' if len(blocking) == 1 else 'are'} fixed (see above)")
    sys.stdout.flush()
    return 1 if blocking else 0


# ------------------------------------------------------------------------------------------
# building the engine

MAX_BOUNCE_S = 3600.0  # an offline bounce is at most an hour
MAX_REPLAY_S = 6 * 3600.0  # a journal's last command at most this far in (a long set)
LIVE_PREROLL_S = 1.0  # a patch started from silence gets this long to render its first bar
TAIL_S = 4.5          # a replay plays on this long past its last command (a one-shot is 4 s)
RING_OUT_MAX_S = 12.0  # ... and lets what sounds then ring out (a re-pitched note: 8 s)


def _model_info(model: str, patch_dir: Path) -> tuple[Path, Any]:
    """The checkpoint path and the engine's ModelInfo, read without building the networks
    (the worker process builds them)."""
    from pgesam_live.core import ModelInfo  # noqa: PLC0415
    from pgesam_live.model.checkpoints import (  # noqa: PLC0415
        meta_from_payload,
        read_model_payload,
        resolve_model,
    )

    path = resolve_model(model)
    payload, model_id = read_model_payload(path)
    m = meta_from_payload(payload)
    return path, ModelInfo(model_id=model_id, codec=m.codec_name,
                           sample_rate=CODEC_SAMPLE_RATE, pitch_range=m.pitch_range,
                           training_points=list(m.training_points),
                           named_points=_named_points(patch_dir))


CODEC_SAMPLE_RATE = 24000  # both codecs (harmonic, EnCodec 24 kHz) render at 24 kHz


def _named_points(patch_dir: Path) -> dict[str, tuple[float, float]]:
    """Named points of the demo patches, so `at glass` works before any patch is loaded."""
    from pgesam_live.patch import list_patches, load_patch  # noqa: PLC0415

    out: dict[str, tuple[float, float]] = {}
    for p in list_patches(patch_dir):
        try:
            out.update({k: v for k, v in load_patch(p).points.items() if k not in out})
        except PgesamError:
            continue
    return out


class OfflineRig:
    """An offline engine: manual pyo server advanced by the caller, in-process renderer.

    The same engine, scheduler and voice pool as the live instrument; only the clock (blocks
    computed as fast as possible) and the renderer (on demand, in this process) differ."""

    def __init__(self, settings: Settings, synth: Any = None, cache: Any = None,
                 preroll_s: float = 0.0) -> None:
        from pgesam_live.audio import AudioEngine  # noqa: PLC0415
        from pgesam_live.cache import RenderCache  # noqa: PLC0415
        from pgesam_live.core import Engine, ModelInfo  # noqa: PLC0415
        from pgesam_live.model.synth import Synth  # noqa: PLC0415
        from pgesam_live.voices import VoicePool  # noqa: PLC0415
        from pgesam_live.worker import InlineRenderer, OnDemandSource  # noqa: PLC0415

        self.synth = synth if synth is not None else Synth.load(settings.model, settings.device)
        sy = self.synth
        out_sr = settings.sample_rate or sy.sample_rate
        self.audio = AudioEngine("offline", sample_rate=out_sr, buffer_size=settings.buffer_size)
        self.audio.boot()
        self.voices = VoicePool(self.audio, n_voices=settings.n_voices)
        self.cache = cache if cache is not None else RenderCache(
            sy.model_id, sy.codec_name, grid=settings.cache_grid,
            max_bytes=settings.cache_max_bytes)
        self.renderer = InlineRenderer(sy, self.cache)
        info = ModelInfo(model_id=sy.model_id, codec=sy.codec_name, sample_rate=sy.sample_rate,
                         pitch_range=tuple(sy.pitch_range),
                         training_points=list(sy.training_points),
                         named_points=_named_points(settings.patch_dir))
        self.engine = Engine(clock=self.audio, voices=self.voices, cache=self.cache,
                             renderer=self.renderer, model=info, tempo_bpm=settings.tempo_bpm,
                             lookahead_s=settings.lookahead_s, seed=settings.seed,
                             patch_dir=settings.patch_dir, out_sample_rate=out_sr,
                             source=OnDemandSource(self.cache, self.renderer))
        self.engine.prerender_banks = False
        self.engine.wait_for_render_s = 0.0  # rendered on demand: never late
        # Ask for many bars ahead: the in-process renderer then batches up to 25 notes a call.
        self.engine.scheduler.request_ahead_beats = 32.0
        self.engine.scheduler.preroll_s = preroll_s
        self.audio.add_hook(self.engine.on_block)

    def submit_or_fail(self, line: str, src: str, at_s: float | None = None) -> None:
        r = self.engine.submit(line, src=src, at_s=at_s)
        if not r.ok:
            raise PgesamError(r.text)

    def run_until(self, t_s: float) -> None:
        self.audio.advance_to(t_s)

    def run_to_end(self, from_s: float, max_s: float, ring_out_max_s: float = RING_OUT_MAX_S
                   ) -> float:
        """Run from `from_s` until nothing is scheduled and no voice sounds; whatever still
        plays at `max_s` is stopped (hush: notes ring out, within `ring_out_max_s`). Returns
        the end time, on a block boundary."""
        self.run_until(from_s)
        t = from_s
        sched, step = self.engine.scheduler, 0.1
        while True:  # at least one step: what was submitted at from_s is applied in it
            t = min(max_s, t + step)
            self.run_until(t)
            if t >= max_s or not (sched.is_playing() or self.voices.in_use()):
                break
        if sched.is_playing():
            sched.hush()
        end = t + ring_out_max_s
        while t < end and self.voices.in_use():
            t += step
            self.run_until(t)
        return self.audio.time_s()

    def save(self, path: str | Path, seconds: float | None = None) -> Path:
        """The bounce as 16-bit WAV, cut at `seconds`; a note still sounding there fades
        out over its last 10 ms instead of ending on a click."""
        return self.audio.save(path, subtype="PCM_16", seconds=seconds, fade_out_s=0.01)

    def close(self) -> None:
        self.audio.close()




def _patch_model(s: Settings, patch: Any, given: str | None) -> Settings:
    """The patch's `model:` when the command line names none (`--model` wins)."""
    if given not in (None, "default") or patch.model in ("", "default"):
        return s
    from pgesam_live.model.checkpoints import resolve_model  # noqa: PLC0415

    try:
        resolve_model(patch.model)
    except PgesamError as e:
        raise PgesamError(f"{patch.path}: model: {e}") from None
    return s.replace(model=patch.model)


def apply_patch_settings(s: Settings, patch: Any, given_model: str | None) -> Settings:
    """A patch's settings over the environment's, under the command line's: its model (where
    --model names none), seed and tempo."""
    return _patch_model(s, patch, given_model).replace(seed=patch.seed, tempo_bpm=patch.tempo_bpm)


def _load_checked(patch_arg: str, s: Settings, given_model: str | None) -> tuple[Any, Settings]:
    """A patch named on the command line, validated completely (pitches against the model
    it will play with) before anything starts; the settings with its model."""
    from pgesam_live.patch import PatchValidationError, find_patch, load_patch  # noqa: PLC0415

    path = find_patch(patch_arg, s.patch_dir)
    try:
        first = load_patch(path)
    except PatchValidationError as exc:
        # All errors at once: the pitches too, against the model the patch names where that
        # much of it reads (else the one the command line gives).
        named = _raw_patch_model(path)
        use_named = given_model in (None, "default") and named is not None
        model = named if use_named and named is not None else (given_model or s.model)
        try:
            _, info = _model_info(model, s.patch_dir)
        except PgesamError:
            raise exc from None
        load_patch(path, pitch_range=tuple(info.pitch_range), known_points=info.named_points)
        raise
    s = _patch_model(s, first, given_model)
    _, info = _model_info(s.model, s.patch_dir)
    return load_patch(path, pitch_range=tuple(info.pitch_range),
                      known_points=info.named_points), s


def _raw_patch_model(path: Path) -> str | None:
    """A patch's `model:` read loosely (the patch itself has errors), or None."""
    import yaml  # noqa: PLC0415

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) and model.strip() else None


def run_render(ns: Namespace) -> int:
    """`pgesam-live render PATCH --out WAV [--seconds S]`: offline bounce."""
    s = settings_from_args(ns)
    out_path = check_out_path(ns.out, (".wav",))
    patch, s = _load_checked(ns.patch, s, ns.model)
    path = Path(patch.path)
    s = apply_patch_settings(s, patch, ns.model)
    seconds = ns.seconds
    if seconds is None and patch.length_beats() is None:
        raise PgesamError(f"{path}: a sequence repeats forever (repeat: 0); give the bounce a "
                          "length with --seconds S")
    if seconds is not None and (not math.isfinite(seconds) or not 0 < seconds <= MAX_BOUNCE_S):
        raise PgesamError(f"--seconds {seconds}: give a length > 0 and at most {MAX_BOUNCE_S:g}")
    rig = OfflineRig(s)
    try:
        rig.submit_or_fail(f"load {_quote(str(path))}", src="patch", at_s=0.0)
        if seconds is None:
            # To the end: the last note (tempo changes included) and its ring-out.
            seconds = rig.run_to_end(0.0, MAX_BOUNCE_S)
        else:
            rig.run_until(seconds)
        out = rig.save(out_path, seconds=seconds)
    finally:
        rig.close()
    print(f"{out}: {seconds:.2f} s at {rig.audio.sample_rate} Hz, "
          f"{rig.engine.scheduler.counters.notes} notes, {rig.renderer.rendered} rendered")
    return 0


def _quote(text: str) -> str:
    import shlex  # noqa: PLC0415

    return shlex.quote(text)


def run_replay(ns: Namespace) -> int:
    """`pgesam-live replay SESSION [--out WAV]`: live, or offline through the same engine."""
    from pgesam_live.session import read_journal, replay_schedule  # noqa: PLC0415

    header, schedule = replay_schedule(ns.session)
    if schedule and schedule[-1][0] > MAX_REPLAY_S:
        raise PgesamError(f"{ns.session}: its last command is at {schedule[-1][0]:.0f} s; a "
                          f"replay runs at most {MAX_REPLAY_S / 3600:g} h (check the journal's "
                          "t values)")
    if read_journal(ns.session)[1].truncated:
        print(f"{ns.session}: the last line was cut off (a crash mid-write); replaying up to "
              "the line before it", file=sys.stderr)
    s = settings_from_args(ns)
    try:
        s = s.replace(seed=header.get("seed"), tempo_bpm=header.get("tempo"),
                      model=_journal_model(ns.session, str(header.get("model") or ""),
                                           ns.model, s.model))
    except PgesamError as e:
        raise PgesamError(f"{ns.session}:1: header: {e}") from None
    out_path = check_out_path(ns.out, (".wav",)) if ns.out is not None else None
    if out_path is not None and \
            out_path.resolve() == Path(ns.session).with_suffix(".wav").resolve():
        raise PgesamError(f"--out {ns.out} is the session's own live recording; a bounce "
                          f"never replaces it: choose another name, e.g. "
                          f"{out_path.with_name(out_path.stem + '-replay.wav')}")
    if out_path is None:
        return _run_live(s, replay=schedule)
    # The live clock's pre-roll, so sequences start where they started live.
    rig = OfflineRig(s, preroll_s=LIVE_PREROLL_S)
    rig.engine.add_listener(lambda ev: print(
        f"{ns.session}: skipped `{ev['cmd']}` at {ev['t']:.3f} s: {ev['text']}",
        file=sys.stderr) if ev.get("kind") == "rejected" else None)
    try:
        for t_s, src, cmd in schedule:
            r = rig.engine.submit(cmd, src=src, at_s=t_s)
            if not r.ok:
                print(f"{ns.session}: skipped `{cmd.to_line()}` at {t_s:.3f} s: {r.text}",
                      file=sys.stderr)
        # Past the last command: what it started plays on for TAIL_S at most (the session
        # went on until quit, which is not journalled), then what sounds rings out.
        last_s = schedule[-1][0] if schedule else 0.0
        end_s = rig.run_to_end(last_s, last_s + TAIL_S)
        out = rig.save(out_path, seconds=end_s)
    finally:
        rig.close()
    print(f"{out}: {len(schedule)} commands, {end_s:.2f} s")
    return 0


def _journal_model(session: str, played: str, given: str | None, fallback: str = "default"
                   ) -> str:
    """The model to replay a journal with: --model if given, else the one its header names
    (from checkpoints/), else `fallback` (PGESAM_MODEL or the default), with a warning: the
    notes will sound different."""
    from pgesam_live.model.checkpoints import resolve_model  # noqa: PLC0415

    if given not in (None, "default"):
        return str(given)
    if not played:
        return fallback
    try:
        resolve_model(played)
        return played
    except PgesamError:
        print(f"{session}: played with model {played!r}, which is not in checkpoints/; "
              "replaying with the default model (it will sound different: pass --model PATH "
              "to use that file)", file=sys.stderr)
        return fallback


def _drop_unused(journal: Any) -> None:
    """A start that failed before anything played: its journal (a header) goes."""
    journal.close()
    with contextlib.suppress(OSError):
        journal.path.unlink()


def _ring_out(engine: Any, voices: Any, max_s: float = 8.0) -> None:
    """Piped input ended: let what plays and what is queued finish (at most max_s)."""
    import time  # noqa: PLC0415

    end = time.monotonic() + max_s
    time.sleep(0.3)  # the last commands reach the audio hook
    while time.monotonic() < end and (voices.in_use() or engine.renderer.pending):
        time.sleep(0.05)


def run_play(ns: Namespace) -> int:
    """`pgesam-live [play [PATCH]]`: the live instrument."""
    s = settings_from_args(ns)
    if ns.patch:  # a bad patch ends the start here, before any audio or journal
        patch, s = _load_checked(ns.patch, s, ns.model)
        return _run_live(s, patch=patch.path, repl=not ns.no_repl)
    return _run_live(s, repl=not ns.no_repl)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end a live run through its normal shutdown (journal closed, the
    recording a complete WAV), also when the shell started it with SIGINT ignored (a
    background job of a script)."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


def _run_live(s: Settings, patch: str | None = None, replay: list | None = None,
              repl: bool = True) -> int:
    import asyncio  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from pgesam_live.audio import AudioEngine, repair_recordings  # noqa: PLC0415
    from pgesam_live.cache import RenderCache  # noqa: PLC0415
    from pgesam_live.core import Engine  # noqa: PLC0415
    from pgesam_live.model.synth import resolve_device  # noqa: PLC0415
    from pgesam_live.osc import osc_port_problem  # noqa: PLC0415
    from pgesam_live.session import Journal, make_header, session_path  # noqa: PLC0415
    from pgesam_live.voices import VoicePool  # noqa: PLC0415
    from pgesam_live.worker import WorkerClient  # noqa: PLC0415

    path, info = _model_info(s.model, s.patch_dir)
    resolve_device(s.device)  # --device cuda without a GPU: said before anything starts
    problem = osc_port_problem(s.osc_host, s.osc_port)
    if problem:  # before anything is written: a busy port leaves no journal or recording
        raise PgesamError(problem)
    out_sr = s.sample_rate or info.sample_rate
    s.session_dir.mkdir(parents=True, exist_ok=True)
    for line in repair_recordings(s.session_dir):  # sessions cut off by a crash
        print(line, flush=True)
    # The journal first: it takes the session's name, which the recording shares.
    journal = Journal(session_path(s.session_dir), make_header(info.model_id, s.seed,
                                                               s.tempo_bpm))
    try:
        audio = AudioEngine(s.audio, sample_rate=out_sr, buffer_size=s.buffer_size,
                            record_path=journal.path.with_suffix(".wav")
                            if s.audio in ("auto", "record") else None)
        audio.boot()
        if audio.message:
            print(audio.message, flush=True)
        voices = VoicePool(audio, n_voices=s.n_voices)
        cache = RenderCache(info.model_id, info.codec, grid=s.cache_grid,
                            max_bytes=s.cache_max_bytes,
                            spill_dir=(s.cache_dir / "notes") if s.cache_spill else None)
        worker = WorkerClient(cache, model=str(path), device=s.device,
                              n_threads=s.worker_threads)
        engine = Engine(clock=audio, voices=voices, cache=cache, renderer=worker, model=info,
                        tempo_bpm=s.tempo_bpm, lookahead_s=s.lookahead_s, seed=s.seed,
                        patch_dir=s.patch_dir, out_sample_rate=out_sr)
        engine.scheduler.preroll_s = LIVE_PREROLL_S
        worker.on_ready = engine.note_ready
        worker.on_message = engine.message
        audio.add_hook(engine.on_block)
    except BaseException:
        _drop_unused(journal)
        raise

    loop = asyncio.new_event_loop()
    osc = None
    midi = None
    started = False
    _stop_on_signals()
    try:
        journal.on_error = engine.message
        engine.add_listener(journal)
        print(f"pgesam-live: model {info.model_id}, audio {audio.description}, "
              f"journal {journal.path}", flush=True)
        worker.start()
        audio.start()
        started = True
        threading.Thread(target=loop.run_forever, daemon=True, name="osc-loop").start()
        from pgesam_live.osc import OscServer  # noqa: PLC0415

        osc = OscServer(engine, s.osc_host, s.osc_port)
        asyncio.run_coroutine_threadsafe(osc.start(), loop).result(5)
        osc_stats = osc.stats
        engine.add_stat("osc_skewed", lambda: osc_stats["skewed"])
        print(f"OSC on udp {s.osc_host}:{osc.port}", flush=True)
        if s.midi:
            from pgesam_live.midi import start_midi  # noqa: PLC0415

            midi = start_midi(engine, s.midi, message=print)
        if patch:
            r = engine.submit(f"load {_quote(patch)}", src="patch")
            print(r.text if not r.ok else f"loaded {patch}", flush=True)
        if replay is not None:
            import time  # noqa: PLC0415

            t0 = engine.time_s() + LIVE_PREROLL_S
            engine.add_listener(lambda ev: print(
                f"skipped `{ev['cmd']}` at {ev['t'] - t0:.3f} s: {ev['text']}", flush=True)
                if ev.get("kind") == "rejected" else None)
            for t_s, src, cmd in replay:
                r = engine.submit(cmd, src=src, at_s=t0 + t_s)
                if not r.ok:
                    print(f"skipped `{cmd.to_line()}` at {t_s:.3f} s: {r.text}", flush=True)
            # As the offline replay: past the last command until what it started is over,
            # sequences still running stopped TAIL_S after it, then the ring-out.
            last = t0 + (replay[-1][0] if replay else 0.0)
            while engine.time_s() < last or (engine.busy() and engine.time_s() < last + TAIL_S):
                time.sleep(0.1)
            if engine.busy():
                engine.submit("hush", src="patch")
            _ring_out(engine, voices, max_s=RING_OUT_MAX_S)
        elif repl:
            from pgesam_live.repl import run_repl  # noqa: PLC0415

            run_repl(engine)
            if not sys.stdin.isatty():
                _ring_out(engine, voices)
        else:
            # Wake twice a second: a signal the kernel hands to another thread sets Python's
            # flag but does not interrupt a wait without timeout, so the handlers that
            # _stop_on_signals installed would only run at the next wake-up.
            while not engine.quit_requested.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        if osc is not None:
            loop.call_soon_threadsafe(osc.close)
        if midi is not None:
            midi.close()
        loop.call_soon_threadsafe(loop.stop)
        audio.stop()
        audio.close()
        worker.stop()
        if not started and journal.count == 0:
            _drop_unused(journal)  # it never played: nothing to keep
        else:
            journal.close()
            lost = f" ({journal.error})" if journal.error else ""
            print(f"session journal {journal.path}{lost}", flush=True)
        if audio.record_path is not None and audio.backend == "record" \
                and Path(audio.record_path).is_file():
            print(f"recorded {audio.record_path}", flush=True)
    return 0
