"""Settings precedence: command line > patch > environment (PGESAM_*) > defaults, per field.

The command line's options default to None, so a value not given there never hides the
environment's (`PGESAM_OSC_PORT=9001 pgesam-live` listens on 9001)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pgesam_live.app.common import settings_from_args
from pgesam_live.cli import build_parser
from pgesam_live.settings import Settings

# field, environment variable, command-line flag(s), env value, cli value, parsed values
FIELDS = [
    ("model", "PGESAM_MODEL", "--model", "envmodel", "climodel", "envmodel", "climodel"),
    ("device", "PGESAM_DEVICE", "--device", "cuda", "cpu", "cuda", "cpu"),
    ("audio", "PGESAM_AUDIO", "--audio", "none", "record", "none", "record"),
    ("osc_host", "PGESAM_OSC_HOST", "--osc-host", "0.0.0.0", "127.0.0.2", "0.0.0.0",
     "127.0.0.2"),
    ("osc_port", "PGESAM_OSC_PORT", "--osc-port", "9001", "9002", 9001, 9002),
    ("midi", "PGESAM_MIDI", "--midi", "envport", "cliport", "envport", "cliport"),
    ("sample_rate", "PGESAM_SAMPLE_RATE", "--sample-rate", "44100", "48000", 44100, 48000),
    ("lookahead_s", "PGESAM_LOOKAHEAD_S", "--lookahead", "0.3", "0.4", 0.3, 0.4),
]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("PGESAM_") and k not in ("PGESAM_TORCH_THREADS",):
            monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("field,env,flag,env_raw,cli_raw,env_val,cli_val", FIELDS,
                         ids=[f[0] for f in FIELDS])
def test_environment_beats_defaults_and_command_line_beats_environment(
        monkeypatch: pytest.MonkeyPatch, field: str, env: str, flag: str, env_raw: str,
        cli_raw: str, env_val: object, cli_val: object) -> None:
    _clean_env(monkeypatch)
    ap = build_parser()
    default = getattr(Settings(), field)
    # Defaults only.
    assert getattr(settings_from_args(ap.parse_args(["play"])), field) == default
    # The environment wins over the defaults: the command line's defaults do not hide it.
    monkeypatch.setenv(env, env_raw)
    assert getattr(settings_from_args(ap.parse_args(["play"])), field) == env_val
    # The command line wins over the environment.
    ns = ap.parse_args(["play", flag, cli_raw])
    assert getattr(settings_from_args(ns), field) == cli_val


def test_osc_port_from_the_environment_with_no_subcommand(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The issue's case: `PGESAM_OSC_PORT=9001 pgesam-live` (play implied) listens on 9001."""
    _clean_env(monkeypatch)
    monkeypatch.setenv("PGESAM_OSC_PORT", "9001")
    ns = build_parser().parse_args(["play"])
    assert ns.osc_port is None
    assert settings_from_args(ns).osc_port == 9001


@pytest.mark.parametrize("cmd", [["render", "p.yaml", "--out", "o.wav"],
                                 ["replay", "s.jsonl"], ["note", "0", "0", "C4", "--out",
                                                         "o.wav"],
                                 ["map", "--out", "m.png"], ["bench"], ["doctor"]])
def test_every_settings_command_leaves_unset_options_none(cmd: list[str]) -> None:
    ns = build_parser().parse_args(cmd)
    for name in ("model", "device", "audio", "osc_host", "osc_port", "midi", "sample_rate"):
        assert getattr(ns, name) is None, (cmd, name)


def test_a_patch_beats_the_environment_and_the_command_line_beats_the_patch(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pgesam_live.app.inputs import apply_patch_settings

    _clean_env(monkeypatch)
    patch_model = tmp_path / "patch-model.pt"
    patch_model.write_bytes(b"x")
    patch = SimpleNamespace(model=str(patch_model), seed=7, tempo_bpm=104.0, path="p.yaml")
    monkeypatch.setenv("PGESAM_MODEL", "envmodel")
    monkeypatch.setenv("PGESAM_SEED", "3")
    monkeypatch.setenv("PGESAM_TEMPO_BPM", "90")
    s = settings_from_args(build_parser().parse_args(["play"]))
    assert (s.model, s.seed, s.tempo_bpm) == ("envmodel", 3, 90.0)
    out = apply_patch_settings(s, patch, given_model=None)
    assert (out.model, out.seed, out.tempo_bpm) == (str(patch_model), 7, 104.0)
    # --model on the command line wins over the patch's model.
    out = apply_patch_settings(s, patch, given_model="climodel")
    assert out.model == "envmodel"  # s carries the command line's value already
    ns = build_parser().parse_args(["play", "--model", "climodel"])
    out = apply_patch_settings(settings_from_args(ns), patch, given_model=ns.model)
    assert out.model == "climodel"
    # A patch that names no model (or `default`) leaves the environment's.
    plain = SimpleNamespace(model="default", seed=0, tempo_bpm=120.0, path="p.yaml")
    assert apply_patch_settings(s, plain, given_model=None).model == "envmodel"
