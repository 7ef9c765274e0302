"""The soundfont renderer and the NSynth-format data set builder."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pgesam_live.errors import ConfigError, DataError
from pgesam_live.model import soundfont as sfm

SF_SMALL = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


def _fluidsynth_ok() -> str | None:
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as e:
        return f"libfluidsynth missing ({e}); apt-get install libfluidsynth3"
    if not SF_SMALL.is_file():
        return f"{SF_SMALL} missing; apt-get install timgm6mb-soundfont"
    return None


needs_fs = pytest.mark.skipif(_fluidsynth_ok() is not None, reason=str(_fluidsynth_ok()))


# --- pure functions -------------------------------------------------------------------------

def test_family_table_maps_gm_programs_to_nsynth_families() -> None:
    expect = {0: "keyboard", 24: "guitar", 40: "string", 56: "brass", 73: "flute",
              32: "bass", 12: "mallet", 16: "organ", 65: "reed", 81: "synth_lead",
              52: "vocal", 91: "vocal", 110: "string"}
    for prog, fam in expect.items():
        assert sfm.GM_FAMILY[prog][0] == fam, prog
    assert sfm.GM_FAMILY[38] == ("bass", "synthetic")
    assert sfm.GM_FAMILY[27] == ("guitar", "electronic")
    assert sfm.GM_FAMILY[19] == ("organ", "acoustic")
    # every family is represented, every source is one of NSynth's three
    assert {f for f, _ in sfm.GM_FAMILY.values()} == set(sfm.FAMILIES)
    assert {s for _, s in sfm.GM_FAMILY.values()} <= set(sfm.SOURCES)
    # timpani, orchestra hit, synth effects, drums and sound effects have no NSynth family
    for prog in (47, 55, 96, 103, 115, 118, 120, 127):
        assert prog not in sfm.GM_FAMILY and prog in sfm.LEFT_OUT_PROGRAMS
    assert len(sfm.GM_NAMES) == 128 and sfm.GM_NAMES[73] == "Flute"
    assert set(sfm.GM_FAMILY) | set(sfm.LEFT_OUT_PROGRAMS) == set(range(128))


def test_nsynth_family_order() -> None:
    assert sfm.FAMILIES.index("bass") == 0 and sfm.FAMILIES.index("vocal") == 10
    assert sfm.FAMILIES.index("keyboard") == 4 and len(sfm.FAMILIES) == 11


def test_parse_pitches_and_velocities() -> None:
    assert sfm.parse_pitches("36-40") == [36, 37, 38, 39, 40]
    assert sfm.parse_pitches("60,48, 72") == [48, 60, 72]
    assert sfm.parse_pitches("36-37,60") == [36, 37, 60]
    assert sfm.parse_velocities("100") == [100]
    assert sfm.parse_velocities("127,50") == [50, 127]
    for bad in ("", "x", "84-36", "0-200"):
        with pytest.raises(ConfigError):
            sfm.parse_pitches(bad)
    for bad in ("", "0", "loud", "128"):
        with pytest.raises(ConfigError):
            sfm.parse_velocities(bad)


def test_soundfont_stem() -> None:
    assert sfm.soundfont_stem("/x/FluidR3_GM.sf2") == "fluidr3_gm"
    assert sfm.soundfont_stem("MuseScore_General.sf3") == "musescore_general"
    assert sfm.soundfont_stem("My Bank-v2.sf2") == "my_bank_v2"


def test_silence_reason() -> None:
    sr = 8000
    t = np.arange(sr * 2) / sr
    tone = (0.1 * np.sin(2 * np.pi * 220 * t) * np.exp(-t)).astype(np.float32)
    assert sfm.silence_reason(tone, sr) is None
    assert sfm.silence_reason(np.zeros(sr, np.float32), sr) == "silent"
    assert sfm.silence_reason(np.full(sr, 5e-5, np.float32), sr) == "silent"
    click = np.zeros(sr * 2, np.float32)
    click[100:120] = 0.5
    assert sfm.silence_reason(click, sr) == "mostly silent"


def test_assign_splits_deterministic_disjoint_grouped() -> None:
    insts = []
    for fam, n_groups in (("guitar", 10), ("organ", 3), ("vocal", 2), ("bass", 1)):
        for g in range(n_groups):
            for bank in ("a", "b"):  # the same program in two banks: one group
                insts.append((f"{bank}_{fam}_{g}", fam, f"{fam}{g}"))
    s0 = sfm.assign_splits(insts, seed=0)
    assert s0 == sfm.assign_splits(list(reversed(insts)), seed=0)  # order-free, deterministic
    assert set(s0) == {i for i, _, _ in insts}
    for inst, _, group in insts:  # twins share a split
        twin = ("b" if inst[0] == "a" else "a") + inst[1:]
        assert s0[inst] == s0[twin], group
    count = Counter((fam, s0[i]) for i, fam, _ in insts)
    assert count[("guitar", "valid")] == 2 and count[("guitar", "test")] == 2  # 1 group each
    assert count[("guitar", "train")] == 16
    assert count[("organ", "train")] == count[("organ", "valid")] == count[("organ", "test")] == 2
    assert count[("vocal", "train")] == 4 and count[("bass", "train")] == 2
    # another seed picks other held-out guitar groups for at least one of a few seeds
    assert any(sfm.assign_splits(insts, seed=s) != s0 for s in (1, 2, 3))


def test_missing_libfluidsynth_names_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # import now raises ImportError
    with pytest.raises(DataError, match="apt-get install libfluidsynth3"):
        sfm.SoundfontRenderer(SF_SMALL if SF_SMALL.is_file() else __file__)


def test_missing_soundfont_names_apt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install"):
        sfm.SoundfontRenderer(tmp_path / "nope.sf2")
    with pytest.raises(DataError, match="apt-get install"):
        sfm.build_dataset([tmp_path / "nope.sf2"], tmp_path / "out", pitches=[60],
                          progress=False)
    with pytest.raises(ConfigError, match="is a folder"):
        sfm.build_dataset([tmp_path], tmp_path / "out", pitches=[60], progress=False)
    (tmp_path / "noise.sf2").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=r"noise.sf2: not a SoundFont file.*give a SoundFont 2 "
                                        r"file.*FluidR3_GM"):
        sfm.build_dataset([tmp_path / "noise.sf2"], tmp_path / "out", pitches=[60],
                          progress=False)
    assert sfm.soundfont_problem(tmp_path / "noise.sf2") is not None
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        sfm.build_dataset([tmp_path / "nope.sf2"], tmp_path / "afile", pitches=[60],
                          progress=False)


# --- rendering (needs libfluidsynth and a soundfont) ----------------------------------------

@needs_fs
def test_render_note_shape_and_determinism() -> None:
    a = sfm.render_note(str(SF_SMALL), 0, 60, sample_rate=16000, hold_s=0.5, release_s=0.25)
    assert a.dtype == np.float32 and a.shape == (12000,)
    assert 1e-3 < float(np.abs(a).max()) < 1.0
    sfm.render_note(str(SF_SMALL), 40, 72, sample_rate=16000, hold_s=0.3, release_s=0.1)
    b = sfm.render_note(str(SF_SMALL), 0, 60, sample_rate=16000, hold_s=0.5, release_s=0.25)
    assert np.array_equal(a, b)  # a reused synth renders a note exactly as before
    with sfm.SoundfontRenderer(SF_SMALL, 16000) as r:  # and so does a fresh one
        c = r.render(0, 60, 100, 0.5, 0.25)
    assert np.array_equal(a, c)
    with pytest.raises(DataError, match="closed"):
        r.render(0, 60)
    sfm.clear_render_cache()
    assert np.array_equal(a, sfm.render_note(str(SF_SMALL), 0, 60, sample_rate=16000,
                                             hold_s=0.5, release_s=0.25))


@needs_fs
def test_render_note_sounds_at_its_pitch() -> None:
    sr = 24000
    x = sfm.render_note(str(SF_SMALL), 73, 69, sample_rate=sr, hold_s=1.5, release_s=0.1)
    seg = x[int(0.5 * sr): int(1.5 * sr)] * np.hanning(sr)
    spec = np.abs(np.fft.rfft(seg))
    f_peak = np.argmax(spec) * sr / len(seg)
    assert abs(f_peak - 440.0) < 0.03 * 440.0, f_peak


@needs_fs
def test_a_damaged_soundfont_is_named_without_fluidsynth_noise(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert sfm.soundfont_problem(SF_SMALL) is None
    cut = tmp_path / "cut.sf2"
    cut.write_bytes(SF_SMALL.read_bytes()[:4096])  # the header of a real one, then nothing
    with pytest.raises(DataError, match=r"cut.sf2: fluidsynth cannot read it.*give a SoundFont"):
        sfm.SoundfontRenderer(cut, 16000)
    assert capfd.readouterr().err == ""


@needs_fs
def test_renderer_rejects_missing_program() -> None:
    with sfm.SoundfontRenderer(SF_SMALL, 16000) as r:
        assert r.has_program(0) and r.preset_name(0)
        assert not r.has_program(0, bank=77)
        with pytest.raises(DataError, match="no preset"):
            r.render(0, 60, bank=77)


def _build(out: Path, seed: int = 0) -> dict:
    # keyboard x3 (0, 4, 6: enough for a train, valid and test instrument) + guitar x1
    return sfm.build_dataset([SF_SMALL], out, pitches=[48, 60, 72], velocities=[100],
                             seed=seed, sample_rate=16000, programs=[0, 4, 6, 24],
                             hold_s=0.6, release_s=0.2, progress=False)


@needs_fs
def test_tiny_set_has_nsynth_layout_fields_and_disjoint_splits(tmp_path: Path) -> None:
    report = _build(tmp_path / "set")
    root = tmp_path / "set"
    insts: dict[str, set[str]] = {}
    all_ids: dict[str, int] = {}
    note_ids: list[int] = []
    total = 0
    for split in ("train", "valid", "test"):
        d = root / f"nsynth-{split}"
        ex = json.loads((d / "examples.json").read_text())
        insts[split] = {e["instrument_str"] for e in ex.values()}
        total += len(ex)
        for key, e in ex.items():
            assert key == e["note_str"] == f"{e['instrument_str']}-{e['pitch']:03d}-100"
            assert e["instrument_str"].startswith("timgm6mb_")
            prog = int(e["instrument_str"].rsplit("_", 1)[1])
            fam, src = sfm.GM_FAMILY[prog]
            assert e["instrument_family_str"] == fam
            assert e["instrument_family"] == sfm.FAMILIES.index(fam)
            assert e["instrument_source_str"] == src
            assert e["instrument_source"] == sfm.SOURCES.index(src)
            assert e["velocity"] == 100 and e["pitch"] in (48, 60, 72)
            assert e["sample_rate"] == 16000 and e["qualities"] == [0] * 10
            assert all_ids.setdefault(e["instrument_str"], e["instrument"]) == e["instrument"]
            note_ids.append(e["note"])
            info = sf.info(str(d / "audio" / f"{key}.wav"))
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, 12800)
            assert info.subtype == "PCM_16"
        assert len(list((d / "audio").glob("*.wav"))) == len(ex)
    assert total == 12 and report["notes_kept"] == 12 and report["notes_dropped"] == 0
    assert not insts["train"] & insts["valid"] and not insts["train"] & insts["test"]
    assert not insts["valid"] & insts["test"]
    assert len(insts["valid"]) == len(insts["test"]) == 1  # keyboard has 3 instruments
    assert "timgm6mb_024" in insts["train"]  # a lone guitar stays in train
    assert sorted(all_ids.values()) == list(range(4))
    assert sorted(note_ids) == list(range(12))  # unique over the set, as NSynth's
    assert json.loads((root / "report.json").read_text())["instruments"] == 4
    assert "keyboard" in (root / "report.txt").read_text()
    assert not (root / ".staging").exists()


@needs_fs
def test_split_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def splits(out: Path, seed: int) -> dict[str, list[str]]:
        _build(out, seed)
        return {s: sorted(json.loads((out / f"nsynth-{s}" / "examples.json").read_text()))
                for s in ("train", "valid", "test")}

    assert splits(tmp_path / "a", 3) == splits(tmp_path / "b", 3)


@needs_fs
def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    _build(tmp_path / "set")
    with pytest.raises(DataError, match="already holds"):
        _build(tmp_path / "set")


@needs_fs
def test_cli_dataset_soundfont(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pgesam_live.cli import main

    out = tmp_path / "cli"
    rc = main(["dataset", "soundfont", "--soundfont", str(SF_SMALL), "--out", str(out),
               "--pitches", "60", "--sample-rate", "16000"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    # TimGM6mb has every melodic GM program; each family-mapped one is an instrument
    assert report["instruments"] + len(report["instruments_without_sound"]) == len(
        sfm.GM_FAMILY)
    assert report["notes_kept"] + report["notes_dropped"] == len(sfm.GM_FAMILY)
    assert sum(report["notes_per_split"].values()) == report["notes_kept"]
    for fam, n in report["instruments_per_family"].items():
        per = report["instruments_per_split_family"]
        if n >= 3:
            assert per["valid"][fam] >= 1 and per["test"][fam] >= 1, fam
    assert "instruments" in capsys.readouterr().out


@needs_fs
def test_an_interrupted_build_leaves_nothing_behind(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = sfm.SoundfontRenderer.render, {"n": 0}

    def interrupted(self, *a, **k):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(sfm.SoundfontRenderer, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "set")
    assert not (tmp_path / "set" / ".staging").exists()
    assert not list((tmp_path / "set").glob("nsynth-*"))


@needs_fs
def test_a_soundfont_without_the_gm_programs_is_refused_before_rendering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FluidR3_GS.sf2 is such a file: only GS variation banks and drum kits, nothing in bank 0.
    monkeypatch.setattr(sfm.SoundfontRenderer, "preset_name",
                        lambda self, program, bank=0: None)
    with pytest.raises(DataError, match=r"none of the General MIDI programs.*FluidR3_GM"):
        _build(tmp_path / "set")
    assert not (tmp_path / "set").exists() or not any((tmp_path / "set").iterdir())


@needs_fs
def test_a_set_where_nothing_sounds_is_an_error_not_an_empty_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sfm, "silence_reason", lambda wave, sample_rate, **k: "silent")
    with pytest.raises(DataError, match="no note sounded.*--pitches"):
        _build(tmp_path / "set")
    assert not list((tmp_path / "set").glob("nsynth-*"))
    assert not (tmp_path / "set" / ".staging").exists()
