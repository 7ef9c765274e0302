"""The one builder: wires an engine (door, scheduler, cache, renderer, voices, audio) for
play, replay, render and bench. Nothing musical happens here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgesam_live.errors import PgesamError
from pgesam_live.settings import Settings

MAX_BOUNCE_S = 3600.0  # an offline bounce is at most an hour
MAX_REPLAY_S = 6 * 3600.0  # a journal's last command at most this far in (a long set)
LIVE_PREROLL_S = 1.0  # a patch started from silence gets this long to render its first bar
TAIL_S = 4.5          # a replay plays on this long past its last command (a one-shot is 4 s)
RING_OUT_MAX_S = 12.0  # ... and lets what sounds then ring out (a re-pitched note: 8 s)


def model_info(model: str, patch_dir: Path) -> tuple[Path, Any]:
    """The checkpoint path and the engine's ModelInfo, read without building the networks
    (the worker process builds them)."""
    from pgesam_live.engine.door import ModelInfo  # noqa: PLC0415
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
                           named_points=named_points(patch_dir))


CODEC_SAMPLE_RATE = 24000  # both codecs (harmonic, EnCodec 24 kHz) render at 24 kHz


def named_points(patch_dir: Path) -> dict[str, tuple[float, float]]:
    """Named points of the demo patches, so `at glass` works before any patch is loaded."""
    from pgesam_live.patches.files import list_patches  # noqa: PLC0415
    from pgesam_live.patches.schema import load_patch  # noqa: PLC0415

    out: dict[str, tuple[float, float]] = {}
    for p in list_patches(patch_dir):
        try:
            out.update({k: v for k, v in load_patch(p).points.items() if k not in out})
        except PgesamError:
            continue
    return out


@dataclass
class Rig:
    """An engine and what it plays through: the audio clock, the voice pool, the note cache,
    the renderer (the synthesis process's client live, an in-process one offline)."""

    audio: Any
    voices: Any
    cache: Any
    renderer: Any
    engine: Any
    info: Any


def build_rig(s: Settings, info: Any, *, backend: str, make_renderer: Callable[[Any], Any],
              out_sample_rate: int | None = None, record_path: Path | None = None,
              cache: Any = None, spill: bool = False,
              make_source: Callable[[Any, Any], Any] | None = None,
              preroll_s: float = 0.0) -> Rig:
    """The one wiring of an engine, for play, replay, render and bench: audio (booted, not
    started), voices, cache (given, or one from the settings; spilled to disk with `spill`
    and settings.cache_spill), renderer (`make_renderer(cache)`), the engine (the scheduler
    reading `make_source(cache, renderer)`, default: memory only) and its audio hook."""
    from pgesam_live.audio.server import AudioEngine  # noqa: PLC0415
    from pgesam_live.audio.voices import VoicePool  # noqa: PLC0415
    from pgesam_live.engine.door import Engine  # noqa: PLC0415
    from pgesam_live.render.cache import RenderCache  # noqa: PLC0415

    out_sr = out_sample_rate or s.sample_rate or info.sample_rate
    audio = AudioEngine(backend, sample_rate=out_sr, buffer_size=s.buffer_size,
                        record_path=record_path)
    audio.boot()
    voices = VoicePool(audio, n_voices=s.n_voices)
    if cache is None:
        cache = RenderCache(info.model_id, info.codec, grid=s.cache_grid,
                            max_bytes=s.cache_max_bytes,
                            spill_dir=(s.cache_dir / "notes") if spill and s.cache_spill
                            else None,
                            anchors=[(float(p["x"]), float(p["y"]))
                                     for p in info.training_points])
    renderer = make_renderer(cache)
    engine = Engine(clock=audio, voices=voices, cache=cache, renderer=renderer, model=info,
                    tempo_bpm=s.tempo_bpm, lookahead_s=s.lookahead_s, seed=s.seed,
                    patch_dir=s.patch_dir, out_sample_rate=out_sr,
                    source=make_source(cache, renderer) if make_source is not None else None)
    engine.scheduler.preroll_s = preroll_s
    # `export` from a front end renders in its own process with the instrument's model.
    engine.export_model = str(s.model)
    engine.export_device = str(s.device)
    engine.export_dir = Path(s.session_dir)
    audio.add_hook(engine.on_block)
    return Rig(audio=audio, voices=voices, cache=cache, renderer=renderer, engine=engine,
               info=info)


def build_live(s: Settings, info: Any, model_path: Path, *, backend: str | None = None,
               record_path: Path | None = None, cache: Any = None, spill: bool = True,
               preroll_s: float = LIVE_PREROLL_S) -> Rig:
    """A live engine: the real-time audio clock and the synthesis process's client (not
    started: `rig.renderer.start()`, `rig.audio.start()`), its notes and messages wired to
    the engine."""
    from pgesam_live.render.client import WorkerClient  # noqa: PLC0415

    def make_worker(c: Any) -> Any:
        return WorkerClient(c, model=str(model_path), device=s.device, n_threads=s.worker_threads)

    rig = build_rig(s, info, backend=backend or s.audio, make_renderer=make_worker,
                    record_path=record_path, cache=cache, spill=spill, preroll_s=preroll_s)
    rig.renderer.on_ready = rig.engine.note_ready
    rig.renderer.on_message = rig.engine.message
    return rig


class OfflineRig:
    """An offline engine: manual pyo server advanced by the caller, in-process renderer.

    The same engine, scheduler and voice pool as the live instrument (build_rig); only the
    clock (blocks computed as fast as possible) and the renderer (on demand, in this process)
    differ."""

    def __init__(self, settings: Settings, synth: Any = None, cache: Any = None,
                 preroll_s: float = 0.0, spill: bool = False) -> None:
        """spill: read and write the disk note cache (settings.cache_dir / "notes", with
        settings.cache_spill), as the live instrument does: a bounce of a session replays the
        notes the session rendered instead of rendering them again."""
        from pgesam_live.engine.door import ModelInfo  # noqa: PLC0415
        from pgesam_live.model.synth import Synth  # noqa: PLC0415
        from pgesam_live.render.inline import InlineRenderer, OnDemandSource  # noqa: PLC0415

        self.synth = synth if synth is not None else Synth.load(settings.model, settings.device)
        sy = self.synth
        info = ModelInfo(model_id=sy.model_id, codec=sy.codec_name, sample_rate=sy.sample_rate,
                         pitch_range=tuple(sy.pitch_range),
                         training_points=list(sy.training_points),
                         named_points=named_points(settings.patch_dir))
        rig = build_rig(settings, info, backend="offline",
                        make_renderer=lambda c: InlineRenderer(sy, c), cache=cache,
                        make_source=OnDemandSource, preroll_s=preroll_s, spill=spill)
        self.audio, self.voices, self.cache = rig.audio, rig.voices, rig.cache
        self.renderer, self.engine = rig.renderer, rig.engine
        self.engine.prerender_banks = False
        self.engine.wait_for_render_s = 0.0  # rendered on demand: never late
        # Ask for many bars ahead: the in-process renderer then batches up to 25 notes a call.
        self.engine.scheduler.request_ahead_beats = 32.0

    def submit_or_fail(self, line: str, src: str, at_s: float | None = None) -> None:
        r = self.engine.submit(line, src=src, at_s=at_s)
        if not r.ok:
            raise PgesamError(r.text)

    progress: Any = None  # a tqdm bar counting seconds of audio (`bar()`), or None

    def bar(self, total_s: float | None, desc: str) -> Any:
        """A progress bar (tqdm, on stderr, only when it is a terminal) over the bounce's
        seconds; closed by `close()`."""
        from tqdm import tqdm  # noqa: PLC0415

        self.progress = tqdm(total=None if total_s is None else round(total_s, 1), desc=desc,
                             unit="s", unit_scale=False, disable=None, mininterval=0.5,
                             dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/"
                             "{total_fmt} s of audio [{elapsed}<{remaining}]")
        return self.progress

    def run_until(self, t_s: float) -> None:
        if self.progress is None:
            self.audio.advance_to(t_s)
            return
        # In steps of a second, so the bar moves through a long stretch. `advance_to` stops
        # at the block that reaches t_s within a rounding tolerance, so a t_s a hair past a
        # block boundary (0.1 added up) may stay above time_s(): stop when a step moved nothing.
        while self.audio.time_s() < t_s:
            before_s = self.audio.time_s()
            self.audio.advance_to(min(t_s, before_s + 1.0))
            self.progress.update(max(0.0, self.audio.time_s() - self.progress.n))
            if self.audio.time_s() == before_s:
                break

    def run_to_end(self, from_s: float, max_s: float, ring_out_max_s: float = RING_OUT_MAX_S
                   ) -> float:
        """Run from `from_s` until nothing is scheduled and no voice sounds; keys still held
        are released once nothing more is scheduled; whatever still plays at `max_s` is
        stopped (hush: notes ring out, within `ring_out_max_s`). Returns the end time, on a
        block boundary."""
        self.run_until(from_s)
        t = from_s
        sched, step = self.engine.scheduler, 0.1
        while True:  # at least one step: what was submitted at from_s is applied in it
            t = min(max_s, t + step)
            self.run_until(t)
            if not sched.is_playing():
                # Nothing more to come, and a key still down (its journal ended first): let
                # it go into its own release, where a live replay lets it go.
                self._let_go_held()
            if t >= max_s or not (sched.is_playing() or self.voices.in_use()):
                break
        self._let_go_held()
        if sched.is_playing():
            sched.hush()
        end = t + ring_out_max_s
        while t < end and self.voices.in_use():
            t += step
            self.run_until(t)
        return self.audio.time_s()

    def _let_go_held(self) -> None:
        for pitch in self.engine.scheduler.held_keys():
            self.engine.submit(f"release {pitch}", src="patch")

    def save(self, path: str | Path, seconds: float | None = None) -> Path:
        """The bounce as 16-bit WAV, cut at `seconds`; a note still sounding there fades
        out over its last 10 ms instead of ending on a click."""
        return self.audio.save(path, subtype="PCM_16", seconds=seconds, fade_out_s=0.01)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        self.audio.close()
