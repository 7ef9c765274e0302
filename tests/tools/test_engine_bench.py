"""Smoke test of the engine bench: every figure comes back with a sane type and value, through
the real engine, worker process and pyo, on a tiny model with short settings; `--only` skips
the work behind keys not asked for."""

from __future__ import annotations

import json
import os
from argparse import Namespace
from pathlib import Path

import pytest

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.errors import CheckpointError, ConfigError  # noqa: E402
from pgesam_live.model.checkpoints import save_model  # noqa: E402
from pgesam_live.model.synth import Synth  # noqa: E402
from pgesam_live.tools import bench  # noqa: E402
from pgesam_live.tools.engine_bench import ENGINE_KEYS, engine_figures  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny model (pitches 48..72) saved as a real checkpoint file."""
    sy = Synth.untrained("tiny", device="cpu")
    return save_model(tmp_path_factory.mktemp("ckpt"), sy.vae, sy.transformer, sy.meta)


def test_engine_figures_returns_every_key_with_sane_values(tiny_model: Path) -> None:
    f = engine_figures(str(tiny_model), "cpu", n_triggers=6, voices_seconds=0.3,
                       bounce_seconds=1.5, timeout_s=60, audio_seconds=1.0, n_cold=3)
    assert set(f) == set(ENGINE_KEYS)
    # A note from nothing: rendered, then played (no fallback), slower than a cache hit.
    assert f["cold_trigger_notes"] == 3 and f["cold_trigger_target_ms"] == 40.0
    assert f["trigger_latency_ms"] < f["cold_trigger_ms"] <= f["cold_trigger_p95_ms"] \
        <= f["cold_trigger_max_ms"]
    assert f["cold_generate_ms"] > 0.0 and f["cold_decode_ms"] > 0.0
    # A cold note starts from its head (render/stream.py) unless its whole render came first
    # (the tiny model renders a note in a few ms).
    assert 0 <= f["cold_streamed"] <= 3 and f["cold_head_ms"] > 0.0
    # A cache hit reaches the output within a few blocks (10.7 ms each), never instantly.
    mean, p95, mx = (f[k] for k in ("trigger_latency_ms", "trigger_latency_p95_ms",
                                    "trigger_latency_max_ms"))
    assert all(isinstance(v, float) for v in (mean, p95, mx))
    assert 0.0 < mean <= p95 <= mx < 500.0
    assert isinstance(f["bank_prerender_s"], float) and 0.0 < f["bank_prerender_s"] < 60.0
    assert f["bank_prerender_pitches"] == 25
    assert isinstance(f["voices_64_cpu_pct"], float) and 0.0 < f["voices_64_cpu_pct"] < 1000.0
    assert f["bounce_seconds"] == pytest.approx(1.5, abs=0.011)  # whole 256-sample blocks
    assert f["bounce_notes"] > 0
    assert isinstance(f["bounce_realtime_factor"], float) and f["bounce_realtime_factor"] > 0.0
    assert isinstance(f["bounce_cold_s"], float) and f["bounce_cold_s"] > 0.0
    assert f["bounce_identical"] is True
    assert isinstance(f["engine_threads"], int) and f["engine_threads"] >= 1
    assert f["worker_threads"] >= 1 and f["engine_device"] == "cpu"
    assert f["engine_model"].startswith("pgesam_tiny_harmonic-")
    # The audio callback per block, with slow disks and an OSC poller (the figure itself,
    # max < block period, is machine-dependent: reported, not asserted here).
    assert 0.0 < f["audio_callback_mean_ms"] <= f["audio_callback_p99_ms"] \
        <= f["audio_callback_max_ms"]
    assert f["audio_block_ms"] == pytest.approx(10.667, abs=0.001)
    assert f["audio_callback_blocks"] > 50 and isinstance(f["audio_callback_ok"], bool)
    assert f["audio_disk_reads"] > 0 and f["audio_journal_lines"] > 2
    assert f["audio_osc_polls"] > 10


def test_only_skips_other_work(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    def no_model_figures(*_: object) -> dict[str, object]:
        raise AssertionError("model figures measured though not asked for")

    monkeypatch.setattr(bench, "model_figures", no_model_figures)
    ns = Namespace(only="voices_64_cpu_pct", json=True, model=str(tiny_model), device="cpu")
    assert bench.run_bench(ns) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"voices_64_cpu_pct", "engine_model"}
    # Directly: no worker started, no bounce run when only the voice figure is wanted.
    f = engine_figures(str(tiny_model), "cpu", only={"voices_64_cpu_pct"}, voices_seconds=0.3)
    assert not any(k.startswith(("trigger", "bank", "bounce")) for k in f)


def test_a_named_model_that_does_not_exist_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="not found"):
        engine_figures("no-such-model", "cpu", only={"voices_64_cpu_pct"})


def test_an_unknown_only_key_is_refused_before_any_measuring(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def measured(*_: object, **__: object) -> dict[str, object]:
        raise AssertionError("measured before checking --only")

    monkeypatch.setattr(bench, "model_figures", measured)
    monkeypatch.setattr("pgesam_live.tools.engine_bench.engine_figures", measured)
    ns = Namespace(only="note_render_s,bogus", json=True, model="default", device="cpu")
    with pytest.raises(ConfigError, match=r"--only bogus: no such figure.*note_render_s"):
        bench.run_bench(ns)


def test_model_keys_name_every_model_figure(tiny_model: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The --only check relies on MODEL_KEYS; the model figures must not print a key it lacks.
    # (The tiny model stands in for the fresh default config too: the keys are the same.)
    monkeypatch.setattr(Synth, "untrained",
                        classmethod(lambda cls, *a, **k: Synth.load(str(tiny_model), device="cpu")))
    out = bench.model_figures(str(tiny_model), "cpu")
    assert set(out) <= set(bench.MODEL_KEYS)
    assert {"note_render_s", "bank_render_s", "kv_speedup", "codec_decode_s"} <= set(out)


def test_a_bad_model_is_an_error_not_an_untrained_stand_in(tmp_path: Path) -> None:
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(b"PK\x03\x04 not a whole model")
    for model in ("no-such-model", str(bad)):
        with pytest.raises(CheckpointError):
            bench.model_figures(model, "cpu")


def test_a_broken_default_is_an_error_and_only_an_empty_folder_times_the_untrained_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGESAM_CHECKPOINT_DIR", str(tmp_path))
    (tmp_path / "DEFAULT").write_text("pgesam_gone-00000000.pt\n")
    with pytest.raises(CheckpointError):
        bench.model_figures("default", "cpu")
