"""The command line's own checks: bad output paths, lengths, options, patches and models get
one line and exit 1 (bad usage: 2) before any work is done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgesam_live.errors import PgesamError

os.environ.setdefault("PYO_GUI_WX", "0")

from pgesam_live.cli import build_parser, main  # noqa: E402


@pytest.fixture
def patch_file(tmp_path: Path) -> Path:
    p = tmp_path / "one.yaml"
    p.write_text("pgesam: 1\nevents:\n  - {at: 0, note: C4}\n")
    return p


@pytest.mark.parametrize("args, fragment", [
    (["note", "0", "0", "60", "--out", "{tmp}"], "is a folder"),
    (["note", "0", "0", "60", "--out", "{tmp}/a.mp3"], "name it a.wav"),
    (["map", "--out", "{tmp}"], "is a folder"),
    (["map", "--out", "{tmp}/m.txt"], "name it m.png"),
    (["render", "{patch}", "--out", "{tmp}/x.wav", "--seconds", "nan"], "--seconds nan"),
    (["render", "{patch}", "--out", "{tmp}/x.wav", "--seconds", "-1"], "length > 0"),
    (["render", "{patch}", "--out", "{tmp}/x.flac"], "name it x.wav"),
    (["replay", "{tmp}/none.jsonl", "--out", "{tmp}/x.wav"], "cannot read the journal"),
])
def test_user_errors_are_one_line_and_exit_1(args: list[str], fragment: str, tmp_path: Path,
                                             patch_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(tmp=tmp_path, patch=patch_file) for a in args]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("args", [
    ["note", "0", "0", "60", "--out", "a.wav", "--seed", "-5"],
    ["note", "0", "0", "60", "--out", "a.wav", "--sample-rate", "0"],
    ["play", "--osc-port", "70000"],
    ["play", "--web-port", "0"],
    ["play", "--lookahead", "99"],  # as a bad port: a bad option value is bad usage
    ["play", "--lookahead", "nan"],
    ["map", "--out", "m.png", "--json"],  # not both
])
def test_bad_option_values_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(args)
    assert info.value.code == 2


@pytest.mark.parametrize("where, fragment", [
    (["0.1", "0.2", "0.3"], "give X Y or one point NAME"),
    (["0.1", "zz"], "give X Y (numbers)"),
    (["0.1", "9"], "outside the map"),
    (["glass", "--pitches", "H4"], "--pitches 'H4'"),
    (["glass", "--pitches", "H4-C5"], '"H4" is not a note name'),
    (["glass", "--pitches", "C5-C4"], "low end is above the high end"),
    (["glass", "--pitches", "20-200"], "200"),
    (["glass", "--pitches", ""], "--pitches is empty"),
])
def test_export_point_words_are_usage_errors_before_a_model_loads(
        where: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pgesam_live.model import synth

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(synth.Synth, "load", no_model)
    with pytest.raises(SystemExit) as info:
        main(["export", *where, "--out", str(tmp_path / "e")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "usage: pgesam-live export" in err
    assert not (tmp_path / "e").exists()


def test_note_usage_names_one_note() -> None:
    """`note` renders one note: its usage line does not offer more (argparse's own form of
    its words would repeat them)."""
    from pgesam_live.cli import _subcommands

    usage = _subcommands(build_parser())["note"].format_usage()
    assert "(X Y PITCH | NAME PITCH)" in usage and "..." not in usage


def test_common_options_are_accepted_everywhere(patch_file: Path) -> None:
    common = ["--model", "default", "--device", "cpu", "--audio", "none", "--osc-host",
              "127.0.0.1", "--osc-port", "9100", "--sample-rate", "48000"]
    for head in (["play"], ["render", str(patch_file), "--out", "x.wav"], ["replay", "s.jsonl"],
                 ["note", "0", "0", "C4", "--out", "x.wav"], ["map", "--out", "m.png"],
                 ["bench"], ["doctor"]):
        ns = build_parser().parse_args([*head, *common])
        assert ns.osc_port == 9100 and ns.sample_rate == 48000


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("pgesam-live ")


def test_a_bad_start_patch_ends_the_start(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`play PATCH` validates PATCH (pitches against the model) before any audio, OSC or
    journal: exit 1, nothing left behind."""
    bad = tmp_path / "low.yaml"
    bad.write_text("pgesam: 1\nevents:\n  - {at: 0, note: C1}\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["play", str(bad), "--no-repl", "--audio", "record", "--osc-port", "9219"]) == 1
        assert main(["play", "nosuch.yaml", "--no-repl", "--audio", "none"]) == 1
        chain = tmp_path / "chain.yaml"  # it loads a patch that is not there, later
        chain.write_text('pgesam: 1\ncommands: [{at: 8, do: "load gone"}]\n')
        assert main(["play", str(chain), "--no-repl", "--audio", "none"]) == 1
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert "low.yaml:3: events[0].note: C1 (24) is outside" in err and "no patch" in err
    assert "\"load gone\": no patch 'gone'" in err
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_a_patch_model_that_does_not_exist_is_named(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "m.yaml"
    p.write_text("pgesam: 1\nmodel: nosuch_model\nevents:\n  - {at: 0, note: C4}\n")
    assert main(["render", str(p), "--out", str(tmp_path / "x.wav")]) == 1
    assert "m.yaml: model:" in capsys.readouterr().err


def test_a_busy_osc_port_ends_the_start_with_nothing_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["play", "--no-repl", "--audio", "record", "--osc-port", str(port)]) == 1
    finally:
        os.chdir(cwd)
        holder.close()
    assert "choose another with --osc-port" in capsys.readouterr().err
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_doctor_verifies_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    assert main(["doctor", "--model", str(bad), "--osc-port", "9231"]) == 1
    out = capsys.readouterr().out
    assert "--  model" in out and "not a torch checkpoint" in out and "cannot start" in out
    assert main(["doctor", "--osc-port", "9231"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out
    # the bundled model's memory, and what kind it is
    assert "training instruments (spectra and how their notes move, reach 0.03)" in out


def test_render_reports_every_error_of_a_patch_at_once(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Range errors and names together with the other errors, not one kind per run."""
    p = tmp_path / "c.yaml"
    p.write_text('pgesam: 1\nevents:\n  - {at: 0, note: C4}\ncommands:\n  - "play 200"\n'
                 '  - "at nowhere"\n  - \'seq s "H4" 0.5\'\n  - "note 20"\n'
                 '  - {at: 1, do: "play C1"}\n  - {at: 1, do: "start nosuch"}\n')
    assert main(["render", str(p), "--out", str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err
    for where in ("commands[0]", "commands[1]", "commands[2]", "commands[3]", "commands[4].do",
                  "commands[5].do"):
        assert f"c.yaml:{5 + int(where[9])}: {where}:" in err, where
    assert not (tmp_path / "x.wav").exists()


def test_doctor_says_when_a_model_cannot_be_verified_and_when_cuda_is_missing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import torch

    from pgesam_live.model.checkpoints import read_model_payload_verified

    # A bundled file renamed: its name's hash no longer checks it; only a checksum inside can.
    folder = Path(__file__).resolve().parents[1] / "checkpoints"
    biggest = max(folder.glob("*.pt"), key=lambda p: p.stat().st_size)
    shutil.copy(biggest, tmp_path / "renamed.pt")
    verified = read_model_payload_verified(tmp_path / "renamed.pt")[2]
    assert main(["doctor", "--model", str(tmp_path / "renamed.pt"), "--osc-port", "9232"]) == 0
    out = capsys.readouterr().out
    assert ("cannot be verified" in out) == (not verified) and ("verified" in out)
    if not torch.cuda.is_available():
        assert main(["doctor", "--device", "cuda", "--osc-port", "9232"]) == 1
        out = capsys.readouterr().out
        assert "--device cuda needs a GPU" in out and "cannot start until torch" in out
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            assert main(["play", "--no-repl", "--audio", "record", "--osc-port", "9232",
                         "--device", "cuda"]) == 1
        finally:
            os.chdir(cwd)
        assert "no CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "sessions").exists()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_an_out_path_that_cannot_be_written_is_refused_before_the_work(
        capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["note", "0", "0", "60"], ["render", "morph"]):
        assert main([*argv, "--out", "/proc/pgesam-x.wav"]) == 1
        err = capsys.readouterr().err
        assert "--out /proc/pgesam-x.wav: cannot write there" in err and "internal" not in err


def test_a_replay_bounce_never_replaces_the_sessions_own_recording(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pgesam_live.sessions.journal import Journal, make_header

    j = Journal(tmp_path / "s.jsonl", make_header("m", 0, 120.0))
    j.close()
    (tmp_path / "s.wav").write_bytes(b"RIFF live take")
    assert main(["replay", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "s.wav")]) == 1
    assert "session's own live recording" in capsys.readouterr().err
    assert (tmp_path / "s.wav").read_bytes() == b"RIFF live take"


@pytest.mark.parametrize("field, value, fragment", [
    ("tempo", [120], 'header "tempo" = [120]: setting tempo_bpm: [120] is not a valid float'),
    ("tempo", 0, 'header "tempo" = 0: tempo 0.0 bpm is out of range 20..400'),
    ("tempo", float("nan"), 'header "tempo" = NaN: tempo nan bpm is out of range'),
    ("seed", 1.7, 'header "seed" = 1.7: setting seed: 1.7 is not a valid int'),
    ("seed", True, 'header "seed" = true: setting seed: True is not a valid int'),
])
def test_a_journal_header_with_a_bad_value_is_named(
        field: str, value: object, fragment: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited header: refused in one line naming the line and value, never a
    TypeError or a seed quietly rounded."""
    import json

    from pgesam_live.sessions.journal import make_header

    header = {**make_header("m", 0, 120.0), field: value}
    (tmp_path / "s.jsonl").write_text(json.dumps(header) + "\n")
    assert main(["replay", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "s.jsonl:1: " in err and fragment in err, err
    assert "Traceback" not in err


def test_a_replay_takes_the_sessions_settings_from_its_header_unless_told_otherwise(
        ) -> None:
    from pgesam_live.app.offline import header_settings
    from pgesam_live.sessions.journal import make_header
    from pgesam_live.settings import Settings

    header = make_header("m", 7, 96.0, lookahead_s=0.3, sample_rate=48000, cache_grid=0.05)
    s = header_settings(Settings(), header, "s.jsonl")
    assert (s.seed, s.tempo_bpm, s.lookahead_s, s.sample_rate, s.cache_grid) == \
        (7, 96.0, 0.3, 48000, 0.05)
    s = header_settings(Settings(), header, "s.jsonl", lookahead_s=0.2, sample_rate=44100)
    assert (s.lookahead_s, s.sample_rate) == (Settings().lookahead_s, Settings().sample_rate)
    # (the command line's values are already in the settings given; the header's are not
    # applied over them)
    older = make_header("m", 0, 120.0)  # a journal from before these keys
    assert header_settings(Settings(), older, "s.jsonl") == Settings()
    with pytest.raises(PgesamError, match='s.jsonl:1: header "cache_grid" = 0: cache grid 0'):
        header_settings(Settings(), {**header, "cache_grid": 0}, "s.jsonl")


def test_web_options_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgesam_live.app.common import settings_from_args

    monkeypatch.delenv("PGESAM_WEB", raising=False)
    monkeypatch.delenv("PGESAM_WEB_PORT", raising=False)
    s = settings_from_args(build_parser().parse_args(["play", "--web-port", "8800",
                                                      "--web-host", "0.0.0.0"]))
    assert (s.web, s.web_host, s.web_port) == (True, "0.0.0.0", 8800)
    assert settings_from_args(build_parser().parse_args(["play", "--no-web"])).web is False
    assert settings_from_args(build_parser().parse_args(["play"])).web_port == 8765
    monkeypatch.setenv("PGESAM_WEB", "0")
    assert settings_from_args(build_parser().parse_args(["play"])).web is False


def test_map_json_prints_what_the_page_draws(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pgesam_live.app.build import model_info
    from pgesam_live.patches.schema import load_patch
    from pgesam_live.settings import Settings
    from pgesam_live.vocab.mapview import region_of

    assert main(["map", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    _, info = model_info("default", Settings().patch_dir)
    assert data["model"] == info.model_id
    assert len(data["training_points"]) == len(info.training_points) > 0
    assert set(data["training_points"][0]) >= {"name", "family", "x", "y"}
    glass = load_patch(Settings().patch_dir / "drift-arpeggio.yaml").points["glass"]
    assert data["points"]["glass"] == list(glass)  # a demo patch's point: `at glass`
    assert data["region"] == region_of(info.training_points).as_dict()


def test_doctor_says_whether_the_web_port_is_free(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        main(["doctor", "--osc-port", "9233", "--web-port", str(port)])
        out = capsys.readouterr().out
    finally:
        holder.close()
    line = next(ln for ln in out.splitlines() if " web " in ln)
    assert line.startswith("--") and "--web-port" in line


def test_export_writes_an_sfz_of_a_named_point(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`pgesam-live export NAME --out DIR --pitches C4-D4` with the bundled model: 24-bit WAVs
    at the model's rate and an SFZ whose regions cover every key; a bad name is one line."""
    import soundfile as sf

    out = tmp_path / "glass"
    assert main(["export", "glass", "--out", str(out), "--pitches", "C4-D4",
                 "--device", "cpu"]) == 0
    sfz = out / "glass.sfz"
    text = sfz.read_text()
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 3 and text.count("<region>") == 3
    assert "lokey=0" in text and "hikey=127" in text and "pitch_keycenter=60" in text
    info = sf.info(str(wavs[0]))
    assert info.subtype == "PCM_24" and info.samplerate == 24000
    assert main(["export", "nosuch", "--out", str(tmp_path / "x")]) == 1
    assert "no point named 'nosuch'" in capsys.readouterr().err
    assert main(["export", "0.1", "--out", str(tmp_path / "x")]) == 1
    assert "give X Y or one point NAME" in capsys.readouterr().err
    assert main(["export", "glass", "--out", str(tmp_path / "x"), "--sample-rate",
                 "48000"]) == 1
    assert "drop --sample-rate" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_note_takes_a_point_by_name_and_writes_a_default_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pgesam_live.app.build import named_points
    from pgesam_live.model.checkpoints import load_model
    from pgesam_live.settings import Settings

    monkeypatch.chdir(tmp_path)
    glass = named_points(Settings().patch_dir)["glass"]
    assert main(["note", "glass", "C4"]) == 0
    said = capsys.readouterr().out
    assert (tmp_path / "note-glass-C4.wav").is_file()
    assert f"at glass ({glass[0]:+.2f}, {glass[1]:+.2f})" in said
    assert main(["note", "nowhere", "C4"]) == 1
    err = capsys.readouterr().err
    assert "no point named 'nowhere'; the named points:" in err and "training instrument" in err
    # A training instrument by a word of its program: the bundled model's violin.
    violin = next(p for p in load_model("default").training_points
                  if p["name"] == "fluidr3_gm_040")
    assert main(["note", "violin", "C4"]) == 0
    assert f"at violin ({violin['x']:+.2f}, {violin['y']:+.2f})" in capsys.readouterr().out
    assert main(["note", "0.1", "0.2", "0.3", "C4"]) == 1  # neither form
    assert "give X Y PITCH" in capsys.readouterr().err
    assert main(["note", "0.1", "0.2", "C4", "--out", "n.wav"]) == 0
    assert (tmp_path / "n.wav").is_file()


def test_map_without_out_writes_a_default_picture(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["map"]) == 0
    made = list(tmp_path.glob("map-*.png"))
    assert len(made) == 1 and made[0].stat().st_size > 1000


def test_common_options_before_the_command_name_go_to_that_command(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`pgesam-live --model M doctor` is `doctor --model M`, not a patch named "doctor";
    options alone stay the instrument's (`play`)."""
    from pgesam_live.cli import _command_first

    ap = build_parser()
    assert _command_first(ap, ["--model", "m.pt", "doctor"]) == ["doctor", "--model", "m.pt"]
    assert _command_first(ap, ["--device", "cpu", "note", "glass", "C4", "--out", "n.wav"]) \
        == ["note", "--device", "cpu", "glass", "C4", "--out", "n.wav"]
    assert _command_first(ap, ["--model=m.pt", "--no-web", "map", "--json"]) == \
        ["map", "--model=m.pt", "--no-web", "--json"]
    assert _command_first(ap, ["--web-port", "9000"]) == ["play", "--web-port", "9000"]
    assert _command_first(ap, ["--model", "m.pt", "morph"]) == ["play", "--model", "m.pt",
                                                                 "morph"]
    assert main(["--model", "no-such-model.pt", "map", "--json"]) == 1
    err = capsys.readouterr().err
    assert "no-such-model.pt" in err and "no patch" not in err


def test_a_replay_skips_damaged_lines_and_plays_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One damaged line in the middle of a journal (an editor's slip, a disk error) is named
    and skipped, every one of them (a time past what a replay runs too); the rest of the
    session still plays."""
    import json

    import soundfile as sf

    from pgesam_live.model.checkpoints import save_model
    from pgesam_live.model.synth import Synth
    from pgesam_live.sessions.journal import make_header

    sy = Synth.untrained("tiny", device="cpu")
    model = save_model(tmp_path / "ckpt", sy.vae, sy.transformer, sy.meta)
    lines = [json.dumps(make_header(str(model), 0, 120.0)),
             json.dumps({"t": 0.0, "src": "repl", "cmd": "note 60 0.9"}),
             "garbage {not json",
             json.dumps({"t": 0.1, "src": "repl", "cmd": "tempo 900"}),
             json.dumps({"t": 0.5, "src": "osc", "cmd": "note 64 0.9"}),
             json.dumps({"t": 1e9, "src": "repl", "cmd": "note 67 0.9"}),
             json.dumps({"t": 0.6, "src": "repl", "cmd": "note 62 0.9"})]
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.wav"
    assert main(["replay", str(tmp_path / "s.jsonl"), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    skipped = [x for x in cap.err.splitlines() if x.startswith("skipped ")]
    assert len(skipped) == 3, cap.err
    assert "s.jsonl:3: not JSON" in skipped[0] and "s.jsonl:4: tempo" in skipped[1]
    assert "s.jsonl:6: \"t\" 1000000000 s lies past the 6 h" in skipped[2]
    assert "3 commands" in cap.out and sf.info(str(out)).duration > 0.6
