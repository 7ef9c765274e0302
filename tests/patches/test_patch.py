from __future__ import annotations

from pathlib import Path

import pytest

from pgesam_live.errors import CommandError, PatchError
from pgesam_live.notes import NoteError
from pgesam_live.patches.files import find_patch
from pgesam_live.patches.model import Trajectory, make_sequence
from pgesam_live.patches.schema import (
    MAX_ERRORS_SHOWN,
    PatchValidationError,
    load_patch,
    parse_patch,
)

PATCHES = Path(__file__).resolve().parents[2] / "patches"

# The example of the user contract, verbatim.
CONTRACT = """\
pgesam: 1                 # format version, required
tempo: 120                # beats per minute, default 120
model: default            # checkpoint name or path, default: the bundled model
seed: 0                   # render seed, default 0
points:                   # named timbre points [x, y]
  glass: [0.42, -0.31]
  reed: [-0.55, 0.12]
trajectories:             # timbre moving in musical time
  drift:
    keys:                 # [beat, point name or [x, y]]
      - [0, glass]
      - [8, reed]
      - [16, glass]
    curve: linear         # linear | smooth
    loop: true            # repeat every (last key beat) beats
sequences:
  arp:
    timbre: drift         # point name, [x, y], or trajectory name (sampled at each note's onset)
    notes: "C4 E4 G4 B4 ~ G4 [C4 E4] ~"   # names or numbers; ~ rest; [..] chord
    step: 0.5             # beats per step
    velocity: 0.8         # number, or a list cycled over the steps
    gate: 1.0             # note length as a fraction of the step; omitted = the full one-shot
    start: 0              # beat of the first step
    repeat: 2             # how many times the whole pattern plays; 0 = until stopped
events:                   # single notes
  - {at: 4, note: G2, timbre: reed, velocity: 1.0, length: 2}   # length in beats, optional
"""


def test_the_contract_example_parses() -> None:
    p = parse_patch(CONTRACT, "contract.yaml")
    assert p.tempo_bpm == 120 and p.model == "default" and p.seed == 0
    assert p.points == {"glass": (0.42, -0.31), "reed": (-0.55, 0.12)}
    drift = p.trajectories["drift"]
    assert drift.keys == ((0.0, (0.42, -0.31)), (8.0, (-0.55, 0.12)), (16.0, (0.42, -0.31)))
    assert drift.loop and drift.curve == "linear" and drift.period_beats == 16
    arp = p.sequences["arp"]
    assert arp.timbre is drift and arp.timbre_name == "drift"
    assert arp.pattern == ((60,), (64,), (67,), (71,), (), (67,), (60, 64), ())
    assert (arp.step_beats, arp.velocity, arp.gate, arp.start_beats, arp.repeat) == (
        0.5, (0.8,), 1.0, 0.0, 2)
    steps = arp.steps(passes=2)
    assert len(steps) == 16
    assert steps[9].offset_beats == 4.5 and steps[9].pitches == (64,)
    assert steps[6].length_beats == 0.5
    ev = p.events[0]
    assert (ev.at_beats, ev.pitches, ev.velocity, ev.length_beats) == (4.0, (43,), 1.0, 2.0)
    assert ev.timbre == (-0.55, 0.12)
    assert p.length_beats() == 8.0
    assert p.commands == ()


def test_defaults_and_minimal_patch() -> None:
    p = parse_patch("pgesam: 1\n", "min.yaml")
    assert (p.tempo_bpm, p.model, p.seed, p.points, p.sequences, p.events) == (
        120.0, "default", 0, {}, {}, ())
    p = parse_patch('pgesam: 1\nsequences:\n  s: {notes: "C4 60"}\nevents:\n', "d.yaml")
    s = p.sequences["s"]
    assert (s.step_beats, s.velocity, s.gate, s.repeat, s.timbre) == (0.5, (0.8,), None, 1, None)


def test_velocity_list_cycles_over_steps_across_passes() -> None:
    p = parse_patch('pgesam: 1\nsequences:\n  s: {notes: "C4 D4", velocity: [1, 0.5, 0.2],'
                    " repeat: 3}\n", "v.yaml")
    assert [st.velocity for st in p.sequences["s"].steps(3)] == [1, 0.5, 0.2, 1, 0.5, 0.2]


def test_commands_extension() -> None:
    p = parse_patch('pgesam: 1\ncommands:\n  - {at: 8, do: "tempo 90"}\n  - "at 0.1 0.2"\n'
                    '  - {at: 2, do: "play C4"}\n', "c.yaml")
    assert [(c.line, c.at_beats) for c in p.commands] == [
        ("at 0.1 0.2", None), ("play C4", 2.0), ("tempo 90", 8.0)]
    assert p.length_beats() == 8.0


def test_repeat_zero_has_no_length() -> None:
    p = parse_patch('pgesam: 1\nsequences:\n  s: {notes: "C4", repeat: 0}\n', "r.yaml")
    assert p.length_beats() is None
    assert p.sequences["s"].total_steps is None


def errors_of(text: str, path: str = "patches/x.yaml") -> list[str]:
    with pytest.raises(PatchValidationError) as info:
        parse_patch(text, path)
    assert isinstance(info.value, PatchError)
    return info.value.errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tempo: 120\n", "patches/x.yaml:1: pgesam: is required"),
        ("pgesam: 2\n", "patches/x.yaml:1: pgesam: version \"2\" is not supported"),
        ('pgesam: "1"\n', "patches/x.yaml:1: pgesam: version \"1\" is quoted text; write the "
                           "number without quotes: 'pgesam: 1'"),
        ("pgesam: 1\ncolour: red\n", "patches/x.yaml:2: colour: unknown key; allowed: pgesam"),
        ("pgesam: 1\ntempo: fast\n", 'patches/x.yaml:2: tempo: "fast" is not a number'),
        ("pgesam: 1\ntempo: 1000\n", "patches/x.yaml:2: tempo: 1000 is out of range"),
        ("pgesam: 1\ntempo: true\n", "patches/x.yaml:2: tempo: \"true\" is not a number"),
        ("pgesam: 1\nseed: -3\n", "patches/x.yaml:2: seed: -3 is out of range"),
        ("pgesam: 1\npoints:\n  a: [2, 0]\n", "patches/x.yaml:3: points.a[0]: 2 is out of range"),
        ("pgesam: 1\npoints:\n  a: 0.5\n", 'patches/x.yaml:3: points.a: "0.5" is not a point'),
        ("pgesam: 1\nsequences:\n  arp:\n    step: 1\n    notes: \"C4 E4 H4\"\n",
         'patches/x.yaml:5: sequences.arp.notes: "H4" at step 3 is not a note name'),
        ("pgesam: 1\nsequences:\n  arp:\n    notes: C4\n    speed: 2\n",
         "patches/x.yaml:5: sequences.arp.speed: unknown key; allowed: timbre, notes"),
        ("pgesam: 1\nsequences:\n  arp: {step: 1}\n",
         "patches/x.yaml:3: sequences.arp.notes: is required"),
        ("pgesam: 1\nsequences:\n  arp: {notes: C4, timbre: wood}\n",
         'patches/x.yaml:3: sequences.arp.timbre: "wood" is not a defined point or trajectory'),
        ("pgesam: 1\nsequences:\n  arp: {notes: C4, velocity: [0.5, 2]}\n",
         "patches/x.yaml:3: sequences.arp.velocity[1]: 2 is out of range (velocity is 0..1)"),
        ("pgesam: 1\nsequences:\n  arp: {notes: C4, repeat: 1.5}\n",
         'patches/x.yaml:3: sequences.arp.repeat: "1.5" is not a whole number'),
        ("pgesam: 1\nevents:\n  - {at: 1, note: C4, timbre: [0, 1.7]}\n",
         "patches/x.yaml:3: events[0].timbre[1]: 1.7 is out of range"),
        ("pgesam: 1\nevents:\n  - {at: 1, note: 200}\n",
         'patches/x.yaml:3: events[0].note: "200" is not a note'),
        ("pgesam: 1\ntrajectories:\n  t:\n    keys: [[0, [0, 0]], [4, nowhere]]\n",
         'patches/x.yaml:4: trajectories.t.keys[1][1]: "nowhere" is not a defined point'),
        ("pgesam: 1\ntrajectories:\n  t:\n    keys: [[4, [0, 0]], [2, [1, 1]]]\n",
         "patches/x.yaml:4: trajectories.t.keys[1][0]: beat 2 is not after"),
        ("pgesam: 1\ntrajectories:\n  t: {keys: [[0, [0, 0]]], curve: wiggly}\n",
         'patches/x.yaml:3: trajectories.t.curve: "wiggly" is not a curve; allowed: linear'),
        ("pgesam: 1\ncommands:\n  - {at: 4}\n", "patches/x.yaml:3: commands[0].do: is required"),
        ("pgesam: 1\ntempo: 120\ntempo: 90\n", "patches/x.yaml:3: tempo: duplicate key"),
        ("pgesam: 1\nsequences: [1, 2]\n", "patches/x.yaml:2: sequences: a list is not a mapping"),
        ("pgesam: 1\n  tempo: [\n", "patches/x.yaml:2: not valid YAML"),
        ("", "patches/x.yaml:1: the patch is empty"),
    ],
)
def test_bad_patches_name_file_line_and_key(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_all_errors_are_collected_in_file_order() -> None:
    text = """\
pgesam: 1
tempo: fast
colour: red
points:
  glass: [0.42, -3.1]
sequences:
  arp:
    timbre: glass
    notes: "C4 E4 H4"
    velocity: [0.5, 2]
events:
  - {at: -1, note: Q9}
"""
    errors = errors_of(text)
    lines = [int(e.split(":")[1]) for e in errors]
    assert lines == sorted(lines)
    assert [e.split(": ")[1] for e in errors] == [
        "tempo", "colour", "points.glass[1]", "sequences.arp.notes",
        "sequences.arp.velocity[1]", "events[0].at", "events[0].note"]
    # glass is broken: using it is not reported a second time as "undefined"
    assert not any("sequences.arp.timbre" in e for e in errors)


def test_the_message_shows_every_error_up_to_a_limit() -> None:
    text = "pgesam: 1\n" + "".join(f"bad{i}: 1\n" for i in range(9))
    with pytest.raises(PatchValidationError) as info:
        parse_patch(text, "p.yaml")
    assert len(info.value.errors) == 9
    msg = str(info.value)
    assert msg.startswith("p.yaml:2: bad0: unknown key") and "p.yaml:10: bad8" in msg
    assert "more errors" not in msg
    text = "pgesam: 1\n" + "".join(f"bad{i}: 1\n" for i in range(MAX_ERRORS_SHOWN + 3))
    with pytest.raises(PatchValidationError, match="and 3 more errors"):
        parse_patch(text, "p.yaml")


def test_pitches_outside_the_model_and_bad_command_lines_are_errors() -> None:
    text = ('pgesam: 1\nsequences:\n  a:\n    notes: "C4 G2 G1"\ncommands:\n'
            '  - frobnicate\n  - {at: 1, do: "tempo 9000"}\n  - "play C1"\n  - quit\n'
            'events:\n  - {at: 4, note: C7}\n  - {at: 5, note: C6}\n')
    with pytest.raises(PatchValidationError) as info:
        parse_patch(text, "p.yaml", pitch_range=(48, 72))
    errors = info.value.errors
    # G2 is re-pitched from C3 (an octave beyond the model's range plays); G1 is too far.
    assert errors[0].startswith("p.yaml:4: sequences.a.notes: G1 (31) at step 3 is outside "
                                "what the model plays: 36..84 (C2..C6")
    assert [e.split(": ")[1] for e in errors] == [
        "sequences.a.notes", "commands[0]", "commands[1].do", "commands[2]", "commands[3]",
        "events[0].note"]
    with pytest.raises(PatchValidationError) as info:  # without a model: the lines only
        parse_patch(text, "p.yaml")
    assert len(info.value.errors) == 3


def test_point_and_trajectory_names_must_not_clash() -> None:
    errors = errors_of("pgesam: 1\npoints:\n  a: [0, 0]\ntrajectories:\n  a: {keys: [[0, a]]}\n")
    assert any("trajectories.a: has the same name as a point" in e for e in errors)


def test_load_patch_reads_files_and_names_missing_ones(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(CONTRACT)
    assert load_patch(f).path == str(f)
    assert find_patch("ok", tmp_path) == tmp_path / "ok.yaml"
    with pytest.raises(PatchError, match="no such patch file"):
        load_patch(tmp_path / "nope.yaml")
    with pytest.raises(PatchError, match="patches in .*: ok"):
        find_patch("nope", tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("pgesam: 1\nsequences:\n  a: {notes: \"C4 X\"}\n")
    with pytest.raises(PatchValidationError, match=rf"^{bad}:3: sequences.a.notes"):
        load_patch(bad)


def test_make_sequence_for_the_repl() -> None:
    s = make_sequence("arp", "C4 [E4 G4] ~", 0.25, velocity=(1.0, 0.5))
    assert s.repeat == 0 and s.pattern == ((60,), (64, 67), ())
    assert s.notes == "C4 [E4 G4] ~"
    with pytest.raises(NoteError):
        make_sequence("arp", "C4 H4", 0.25)
    with pytest.raises(CommandError, match="step"):
        make_sequence("arp", "C4", 0)
    with pytest.raises(CommandError, match="name"):
        make_sequence("my arp", "C4", 1)


def test_trajectory_single_key_is_constant() -> None:
    t = Trajectory("t", ((2.0, (0.5, 0.5)),))
    assert t.at(0) == t.at(2) == t.at(100) == (0.5, 0.5)


def test_demo_patches_are_valid() -> None:
    files = sorted(PATCHES.glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        p = load_patch(f)
        assert f.read_text().startswith("#"), f"{f.name} opens with a comment on what it shows"
        length = p.length_beats()
        assert length is not None and 16 <= length <= 40, (f.name, length)
        assert p.sequences or p.events


# What each demo patch's named point is named after (its comment says so): the family of
# the training instruments nearest to it on the bundled model's map.
POINT_FAMILIES = {"glass": "mallet", "pluck": "guitar", "reed": "reed", "dark": "bass",
                  "keys": "keyboard", "brass": "brass", "strings": "string", "flute": "flute"}


def test_demo_patch_points_sit_among_the_instruments_they_are_named_after() -> None:
    """A new bundled model may bring a new map: the demo patches' named points must move
    with it. Each point's three nearest training instruments are of its family."""
    import math

    from pgesam_live.model.checkpoints import (
        meta_from_payload,
        read_model_payload,
        resolve_model,
    )

    payload, _ = read_model_payload(resolve_model("default"))
    training = meta_from_payload(payload).training_points
    seen = set()
    for f in sorted(PATCHES.glob("*.yaml")):
        for name, (x, y) in load_patch(f).points.items():
            seen.add(name)
            near = sorted(training, key=lambda t: math.hypot(t["x"] - x, t["y"] - y))[:3]
            assert {t["family"] for t in near} == {POINT_FAMILIES[name]}, (f.name, name, near)
    assert seen == set(POINT_FAMILIES)


def test_demo_patches_stay_in_the_models_pitch_range() -> None:
    # The bundled model is trained on MIDI 48..72 (the method's 25 pitch classes).
    for f in sorted(PATCHES.glob("*.yaml")):
        p = load_patch(f)
        pitches = [q for s in p.sequences.values() for step in s.pattern for q in step]
        pitches += [q for e in p.events for q in e.pitches]
        assert pitches and 48 <= min(pitches) and max(pitches) <= 72, f.name


def test_notes_may_be_a_yaml_list_of_steps() -> None:
    p = parse_patch('pgesam: 1\nsequences:\n  a:\n    notes: [60, 64, G4, "~", [C4, E4]]\n',
                    "x.yaml")
    assert p.sequences["a"].pattern == ((60,), (64,), (67,), (), (60, 64))
    errors = errors_of("pgesam: 1\npoints:\n  bad: [0.1]\n")
    assert errors == ["patches/x.yaml:3: points.bad: a list of 1 value is not a point: give "
                      "[x, y], two numbers"]
    # A bad step is named where it is, not "a list is not a note string".
    what = "a note name (E4), a whole MIDI number (64) or ~ (a rest)"
    assert errors_of("pgesam: 1\nsequences:\n  a:\n    notes: [60, 64.5]\n") == [
        f'patches/x.yaml:4: sequences.a.notes[1]: "64.5" is not a note: give {what}']
    assert errors_of("pgesam: 1\nsequences:\n  a:\n    notes: [C4, [E4, 1.5]]\n") == [
        f'patches/x.yaml:4: sequences.a.notes[1]: "1.5" is not a note in a chord: give {what}']


def test_yaml_nested_without_end_is_an_error_not_a_crash() -> None:
    errors = errors_of("pgesam: 1\ncommands: " + "[" * 5000 + "]" * 5000 + "\n")
    assert len(errors) == 1 and "nested too deeply" in errors[0], errors


def test_a_bare_name_is_the_patch_folders_first(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As a journal names a patch of the folder: a same-named file where the replay runs does
    not take its place; `./name` asks for that one."""
    (tmp_path / "morph.yaml").write_text("pgesam: 1\n")
    monkeypatch.chdir(tmp_path)
    assert find_patch("morph.yaml", PATCHES) == PATCHES / "morph.yaml"
    assert find_patch("morph", PATCHES) == PATCHES / "morph.yaml"
    assert find_patch("./morph.yaml", PATCHES).resolve() == (tmp_path / "morph.yaml").resolve()


def test_a_file_that_is_no_patch_is_not_quoted_whole(tmp_path: Path) -> None:
    p = tmp_path / "text.yaml"
    p.write_text("root:x:0:0:root:/root:/bin/bash daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin"
                 " bin:x:2:2:bin:/bin:/usr/sbin/nologin\n")
    with pytest.raises(PatchError) as info:
        load_patch(p)
    assert "nologin bin" not in str(info.value) and "..." in str(info.value)


def test_command_names_are_checked_in_the_order_the_commands_run() -> None:
    text = ('pgesam: 1\npoints:\n  a: [0.1, 0.1]\nsequences:\n  arp: {notes: "C4"}\n'
            'commands:\n'
            '  - "at nowhere"\n'                 # 7: no such point
            '  - {at: 1, do: "stop nosuch"}\n'   # 8: nothing of that name
            '  - {at: 1, do: "start nosuch"}\n'  # 9: start plays the patch's own only
            '  - {at: 2, do: "at m"}\n'          # 10: fine: the load-time mark runs first
            '  - "mark m"\n'
            '  - {at: 0.5, do: "at later"}\n'    # 12: marked only at beat 3
            '  - {at: 3, do: "mark later"}\n'
            '  - \'seq s "C4" 1\'\n'
            '  - {at: 3, do: "stop s"}\n'        # fine: seq s ran at load
            '  - {at: 3, do: "stop live"}\n'     # fine: running outside the patch
            '  - {at: 4, do: "start arp"}\n'
            '  - "at glass"\n')                  # fine: a named point of the model
    with pytest.raises(PatchValidationError) as info:
        parse_patch(text, "p.yaml", known_points={"glass"}, known_sequences=["live"])
    errors = info.value.errors
    assert [e.split(": ", 2)[0:2] for e in errors] == [
        ["p.yaml:7", "commands[0]"], ["p.yaml:8", "commands[1].do"],
        ["p.yaml:9", "commands[2].do"], ["p.yaml:12", "commands[5].do"]]
    assert "no point named 'nowhere'" in errors[0] and "known: a, glass" in errors[0]
    assert "start: no sequence 'nosuch' in this patch; arp" in errors[2]
    # Without the names that exist outside the patch, names are not judged (a library use).
    assert parse_patch(text, "p.yaml").commands[0].line == "at nowhere"


def test_seq_at_a_name_is_checked_against_points_marks_and_trajectories() -> None:
    text = ('pgesam: 1\npoints:\n  a: [0.1, 0.1]\n'
            'trajectories:\n  sweep: {keys: [[0, a], [4, [0.2, 0.2]]]}\n'
            'commands:\n'
            '  - \'seq s1 "C4" 1 at a\'\n'          # a point of the patch
            '  - \'seq s2 "C4" 1 at sweep\'\n'      # a trajectory
            '  - \'seq s3 "C4" 1 at glass\'\n'      # a point outside the patch
            '  - \'seq s4 "C4" 1 at nowhere\'\n')   # 10: none of them
    with pytest.raises(PatchValidationError) as info:
        parse_patch(text, "p.yaml", known_points={"glass"})
    (error,) = info.value.errors
    assert error.startswith("p.yaml:10: commands[3]: seq s4: no point or trajectory named "
                            "'nowhere' before this line runs; known: a, glass, sweep"), error


def test_a_folder_given_as_a_patch_is_named_with_what_is_in_it(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "a.yaml").write_text(CONTRACT)
    with pytest.raises(PatchError, match=r"set is a folder: give a patch file in it \(a.yaml\)"):
        find_patch(str(tmp_path / "set"), tmp_path / "nowhere")


def test_names_after_a_load_line_are_the_other_patchs_and_not_judged() -> None:
    text = ('pgesam: 1\ncommands:\n  - "at nowhere"\n  - "load other"\n  - "at bp"\n'
            '  - "start bs"\n')
    with pytest.raises(PatchValidationError) as info:
        parse_patch(text, "p.yaml", known_points=set())
    assert len(info.value.errors) == 1 and "'nowhere'" in info.value.errors[0]


def test_a_patch_may_not_mark_over_its_own_point() -> None:
    with pytest.raises(PatchValidationError, match=r"commands\[0\]: mark: 'a' is a point of "
                                                   r"this patch"):
        parse_patch('pgesam: 1\npoints:\n  a: [0, 0]\ncommands: ["mark a"]\n', "p.yaml",
                    known_points=set())


def test_the_readme_form_patches_slash_name_works_from_any_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_patch("patches/morph.yaml", PATCHES) == PATCHES / "morph.yaml"
    assert find_patch("patches/morph", PATCHES) == PATCHES / "morph.yaml"


def test_a_broken_sequence_is_not_named_undefined_and_a_failed_start_runs_nothing() -> None:
    text = ('pgesam: 1\nsequences:\n  arp: {notes: "C4 H4"}\ncommands:\n  - "start arp"\n'
            '  - "start nope"\n  - {at: 1, do: "stop nope"}\n')
    with pytest.raises(PatchValidationError) as info:
        parse_patch(text, "p.yaml", known_points=set())
    errors = info.value.errors
    assert len(errors) == 3, errors  # H4; start nope; stop nope (never started)
    assert "H4" in errors[0] and "start: no sequence 'nope'" in errors[1]
    assert "stop: no sequence 'nope'" in errors[2]
