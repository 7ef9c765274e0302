"""The one entry point, `pgesam-live` (also `python -m pgesam_live`).

Each subcommand is parsed here and handed to a `run_*` function in the module that owns it,
imported lazily so `pgesam-live train` never loads pyo and `pgesam-live play` never pays for
matplotlib. Exit codes: 0 success, 1 a user error (one line naming the fix), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from pgesam_live.errors import PgesamError

SAMPLE_RATES_HZ = (8000, 192000)


def _int_in(lo: int, hi: int, hint: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in lo..hi (a bad one is a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n}: use {lo}..{hi}{hint}")
        return n
    return parse


def _lookahead(text: str) -> float:
    """An argparse type: the look-ahead in seconds, in the REPL's `lookahead` range."""
    from pgesam_live.vocab.commands import LOOKAHEAD_MAX_S, LOOKAHEAD_MIN_S  # noqa: PLC0415

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not LOOKAHEAD_MIN_S <= value <= LOOKAHEAD_MAX_S:  # (nan fails too)
        raise argparse.ArgumentTypeError(f"{text}: use {LOOKAHEAD_MIN_S:g}..{LOOKAHEAD_MAX_S:g}"
                                         " seconds")
    return value


_sample_rate = _int_in(*SAMPLE_RATES_HZ, " Hz (e.g. 44100, 48000)")
_port = _int_in(1, 65535)
_positive = _int_in(1, 2**31 - 1)
_seed = _int_in(0, 2**31 - 1)


def _add_common(p: argparse.ArgumentParser, *, audio: bool = False) -> None:
    """The contract's common options, on every command that plays or renders. The live ones
    are accepted everywhere, so one option list serves a whole script; an offline command
    (`audio` False) ignores them and leaves them out of its help (its epilog names them)."""
    def live(text: str) -> str:
        return text if audio else argparse.SUPPRESS

    if not audio:
        p.epilog = ("It also accepts the live instrument's options (audio, OSC, MIDI and web; "
                    "see play's help), so one option list serves a whole script, and ignores "
                    "them: it renders offline.")
    # Defaults are None: a value not given on the command line leaves the patch's, the
    # environment's (PGESAM_*) or the settings' default in place (settings.py).
    p.add_argument("--model", default=None,
                   help="checkpoint name or path (default: the bundled model)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where the model runs (default auto: prefers CUDA)")
    p.add_argument("--audio", default=None,
                   choices=["auto", "portaudio", "jack", "record", "none"],
                   help=live("audio backend (default auto: a real device, else record to "
                             "sessions/)"))
    p.add_argument("--osc-host", default=None,
                   help=live("OSC bind address (default 127.0.0.1)"))
    p.add_argument("--osc-port", type=_port, default=None,
                   help=live("OSC UDP port (default 9000)"))
    p.add_argument("--midi", default=None, metavar="PORT|auto", help=live("MIDI input port"))
    p.add_argument("--web-host", default=None,
                   help=live("web page bind address (default 127.0.0.1; beyond loopback the "
                             "printed address carries a token)"))
    p.add_argument("--web-port", type=_port, default=None,
                   help=live("web page TCP port (default 8765)"))
    p.add_argument("--no-web", action="store_true", help=live("serve no web page"))
    p.add_argument("--sample-rate", type=_sample_rate, default=None,
                   help="output sample rate in Hz (the model renders at its own and is "
                        "resampled)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pgesam-live", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="cmd")

    p = sub.add_parser("play", help="the live instrument: audio, REPL, OSC, web page, journal")
    p.add_argument("patch", nargs="?", help="a patch to load at start")
    _add_common(p, audio=True)
    p.add_argument("--no-repl", action="store_true",
                   help="no prompt: run until interrupted (OSC / MIDI only)")
    p.add_argument("--lookahead", type=_lookahead, default=None,
                   help="look-ahead in seconds (as the REPL's `lookahead`)")
    p.set_defaults(func="pgesam_live.app.live:run_play")

    p = sub.add_parser("render", help="offline bounce of a patch")
    p.add_argument("patch", help="a YAML patch (a path, or a name in the patches folder)")
    p.add_argument("--out", required=True, help="the WAV file to write")
    p.add_argument("--seconds", type=float, default=None,
                   help="the bounce's length (default: to the patch's last note and its "
                        "ring-out; needed when a sequence repeats forever)")
    _add_common(p)
    p.set_defaults(func="pgesam_live.app.offline:run_render")

    p = sub.add_parser("replay", help="replay a session journal live, or offline with --out")
    p.add_argument("session", metavar="SESSION",
                   help="a session journal, e.g. sessions/20261207-210000.jsonl")
    p.add_argument("--out", default=None, metavar="WAV",
                   help="bounce it offline into this WAV file (faster than real time); "
                        "without it the session plays live, in real time")
    _add_common(p, audio=True)
    p.add_argument("--lookahead", type=_lookahead, default=None,
                   help="look-ahead in seconds (default: the session's, from its journal)")
    p.set_defaults(func="pgesam_live.app.offline:run_replay")

    p = sub.add_parser("note", help="render one note: X Y PITCH or NAME PITCH (a demo "
                                    "patch's point, e.g. glass C4)",
                       usage="%(prog)s (X Y PITCH | NAME PITCH) [--out WAV] [options]")
    p.add_argument("where", nargs="+", metavar="X Y PITCH | NAME PITCH",
                   help="a point (x y, or a name) and a pitch")
    p.add_argument("--out", default=None,
                   help="WAV file (default: note-NAME-PITCH.wav or note-X_Y-PITCH.wav here)")
    p.add_argument("--velocity", type=float, default=0.8)
    p.add_argument("--seed", type=_seed, default=0)
    _add_common(p)
    p.set_defaults(func="pgesam_live.app.offline:run_note")

    p = sub.add_parser("export", help="a point as a multisample: 24-bit WAVs + an SFZ file",
                       usage="%(prog)s (X Y | NAME) --out DIR [--pitches C3-C5] [options]")
    p.add_argument("where", nargs="+", metavar="X Y | NAME",
                   help="one point: map coordinates, or a name (a demo patch's point such "
                        "as glass, or a training instrument's name as `map --json` lists)")
    p.add_argument("--out", required=True, help="folder for the WAVs and the SFZ")
    p.add_argument("--pitches", default=None,
                   help="e.g. C3-C5 or 48-72 (default: the model's range); keys beyond it "
                        "map to the nearest sample")
    p.add_argument("--name", default=None, help="the SFZ's and samples' name")
    p.add_argument("--seed", type=_seed, default=0)
    _add_common(p)
    for action in p._actions:  # an export is written at the model's rate
        if "--sample-rate" in action.option_strings:
            action.help = ("only the model's own rate: the samples are written at it and "
                           "any SFZ sampler converts them on load")
    p.set_defaults(func="pgesam_live.app.export:run_export")

    p = sub.add_parser("map", help="the timbre map: a picture (--out) or data (--json)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", help="picture file (.png, .svg, .pdf; default: map-MODEL.png "
                                   "here)")
    out.add_argument("--json", action="store_true",
                     help="print the map as JSON: model, training points, named points")
    _add_common(p)
    p.set_defaults(func="pgesam_live.tools.mapplot:run_map")

    p = sub.add_parser("locate", help="where recordings lie on the map: the point that plays "
                                      "like them (several notes of one instrument: their mean)")
    p.add_argument("files", nargs="+", metavar="FILE", help="recordings of single notes")
    p.add_argument("--pitch", default=None,
                   help="the notes' pitch (C4, 60); default: read from each recording")
    p.add_argument("--json", action="store_true", help="print the points as JSON")
    _add_common(p)
    p.set_defaults(func="pgesam_live.tools.locate:run_locate")

    p = sub.add_parser("dataset", help="build an NSynth-format data set")
    dsub = p.add_subparsers(dest="dataset_cmd", required=True)
    d = dsub.add_parser("soundfont", help="render one from General MIDI soundfonts")
    d.add_argument("--soundfont", nargs="+", required=True, metavar="PATH")
    d.add_argument("--out", required=True)
    d.add_argument("--pitches", default="36-84")
    d.add_argument("--velocities", default="100")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--sample-rate", type=_sample_rate, default=24000)
    d.set_defaults(func="pgesam_live.model.soundfont:run_dataset_soundfont")

    p = sub.add_parser("train", help="train the VAE, the Transformer, or both")
    p.add_argument("stage", choices=["vae", "transformer", "all"])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/default", help="run directory (checkpoints, logs)")
    p.add_argument("--config", default=None, help="small | paper | tiny (default: small)")
    p.add_argument("--codec", default="harmonic", choices=["harmonic", "partials", "encodec"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--vae", default=None,
                   help="VAE checkpoint for the transformer stage (a run's vae.pt or a model "
                        "file); with --init, the map the init model's decoder is moved onto")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fine-tune", action="store_true",
                   help="with --resume on a finished Transformer run: another phase from its "
                        "weights with the step count and schedule restarted (--steps, --lr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--pitch-range", default=None, help="e.g. 48-72 (default: the config's)")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--max-instruments-per-family", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--frames-per-step", type=int, default=None,
                   help="Transformer frames per decoder step (overrides the config's)")
    p.add_argument("--decoder", default=None, choices=["autoregressive", "parallel"],
                   help="Transformer decoder of a new run: parallel (all frames at once from "
                        "the point and pitch, the default model's) or autoregressive (the "
                        "paper's recipe); default: autoregressive, or the resumed run's")
    p.add_argument("--delta-weight", type=float, default=None,
                   help="parallel decoder: weight of the frame-difference loss (default 1)")
    p.add_argument("--spectral-weight", type=float, default=None,
                   help="parallel decoder: weight of a loss on decoded audio spectra (0: off)")
    p.add_argument("--point-noise", type=float, default=None,
                   help="Gaussian noise (map units) on the training points (default 0)")
    p.add_argument("--instrument-points", type=float, default=None, metavar="P",
                   help="condition a share P of the training notes on their instrument's point "
                        "(the mean of its notes' points: the named point a performer plays) "
                        "instead of the note's own (default 0: the paper's per-note point)")
    p.add_argument("--blend-points", type=float, default=None, metavar="P",
                   help="parallel decoder: replace a share P of the training notes by points "
                        "drawn between the instruments, each playing the inverse-distance "
                        "blend of its nearest instruments' notes at that pitch (default 0)")
    p.add_argument("--blend-power", type=float, default=None, metavar="Q",
                   help="with --blend-points: the blend's weights 1/d^Q (default 2), 1..256; "
                        "higher keeps each instrument's own sound farther from its point (a "
                        "sharper map; 64: nearly the nearest instrument alone)")
    p.add_argument("--contrast-weight", type=float, default=None, metavar="C",
                   help="parallel decoder: weight of a loss that pushes each note's harmonic "
                        "spectrum away from the nearest other instrument's at its pitch where "
                        "it is nearer that one than its own (default 0: off), 0..100")
    p.add_argument("--map-grid", default=None, metavar="SIDES",
                   help="parallel decoder: a learned feature grid over the map, tables of these "
                        "side lengths (e.g. 16,32,64,128,256), for the map's fine detail; read "
                        "by every block in a new run, by the trained blocks with --init")
    p.add_argument("--map-grid-from-block", type=int, default=None, metavar="K",
                   help="parallel decoder with a map grid (--init or --map-grid): the grid is "
                        "read from block K on (0: every block); the whole decoder trains")
    p.add_argument("--train-blocks", type=int, default=None, metavar="K",
                   help="with --init (parallel decoder): train only the last K blocks, the "
                        "output layer and the map grid, on the frozen blocks' output cached "
                        "per note (own point and instrument's point, no point noise): "
                        "several times the steps an hour")
    p.add_argument("--vae-frames", type=int, default=None, metavar="N",
                   help="a new VAE reads the first N frames of each note (default: the "
                        "config's, 96 = 1.28 s for small; 300: the whole note, its decay "
                        "and release)")
    p.add_argument("--pitch-weight", type=float, default=None,
                   help="loss weight of the pitch channel (harmonic codec; default 300)")
    p.add_argument("--loudness-weight", type=float, default=None,
                   help="parallel decoder: loss weight of the loudness channel (harmonic "
                        "codec; default 10)")
    p.add_argument("--log-dist-weight", type=float, default=None,
                   help="parallel decoder: weight of a loss on the harmonic distribution in "
                        "dB (harmonic codec; 0: off, the default)")
    p.add_argument("--release-weight", type=float, default=None,
                   help="parallel decoder: weight of a loss on the loudness over the first "
                        "0.4 s after the training notes' note-off (harmonic codec; 0: off, "
                        "the default)")
    p.add_argument("--input-noise", type=float, default=None,
                   help="std of Gaussian noise on the Transformer's teacher-forced input "
                        "frames (training only; 0 = off)")
    p.add_argument("--self-feed", type=float, default=None, metavar="P",
                   help="scheduled sampling: feed the Transformer its own predictions in place "
                        "of a share P of its teacher-forced input groups (0 = off)")
    p.add_argument("--self-feed-passes", type=int, default=None, metavar="K",
                   help="chained prediction passes behind each self-fed group (default 2)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="transformer stage: start from this model file's Transformer (and use "
                        "its VAE), e.g. to fine-tune the bundled model; with --vae OTHER the "
                        "decoder is first moved onto OTHER's map (its point MLP and map grid "
                        "refitted, about a minute; --steps 0 stops there)")
    p.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="with --init: train a rank-R delta of each large weight (LoRA) plus "
                        "the small tensors; `pack` then stores it in about 1 MB")
    p.set_defaults(func="pgesam_live.model.train:run_train")

    p = sub.add_parser("eval", help="evaluate a model on an NSynth-format set")
    p.add_argument("--model", default="default")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["test", "valid", "train", "all"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", default=None, help="markdown report path")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-notes", type=_positive, default=None,
                   help="generate at most this many notes (a deterministic subsample)")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="parallel decoder: render with this guidance scale instead of the "
                        "model's own (1 = off)")
    p.add_argument("--codec-only", nargs="+", default=None, metavar="CODEC",
                   help="measure these codecs' own round trips instead of a model (no model "
                        "needed), e.g. --codec-only harmonic partials; --max-notes defaults "
                        "to 200")
    p.add_argument("--tune", choices=["on", "off"], default=None,
                   help="tune each generated note's f0 to its key (default: as the model "
                        "says; off measures the generator alone)")
    p.add_argument("--debuzz", choices=["on", "off"], default=None,
                   help="smooth each generated note's frame-to-frame loudness zig-zag, onsets "
                        "kept (default: as the model says)")
    p.set_defaults(func="pgesam_live.model.eval:run_eval")

    p = sub.add_parser("pack", help="store a fine-tuned model compactly, as a difference "
                                    "from the model it was fine-tuned from, or a model's "
                                    "weights as float16")
    p.add_argument("model", help="the fine-tuned model file (same VAE and configs as --base)")
    p.add_argument("--base", default=None, help="the model file it was fine-tuned from")
    p.add_argument("--rank", type=int, default=None, metavar="R",
                   help="with --base: cut each large matrix's difference to its best rank-R "
                        "approximation, in 8-bit factors (lossy, a quarter of the bytes at "
                        "R=32 for a whole-decoder fine-tune; measure the packed file with "
                        "eval before shipping it)")
    p.add_argument("--float16", action="store_true",
                   help="instead of --base: store the model's weights as float16 (half the "
                        "bytes, self-contained)")
    p.add_argument("--out", default=None,
                   help="folder to write into (default: --base's; with --float16, MODEL's)")
    p.add_argument("--default", action="store_true",
                   help="also make it the folder's default model (writes DEFAULT)")
    p.set_defaults(func="pgesam_live.model.checkpoints:run_pack")

    p = sub.add_parser("memory", help="give a model a spectral memory of its training "
                                      "instruments (their spectra and envelopes, read at "
                                      "render time)")
    p.add_argument("model", help="the model file (packed or not)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the NSynth-format set it was trained on")
    p.add_argument("--split", default="train", help="that set's training split (default train)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder to write the new model file into (default: MODEL's; a packed "
                        "model's base must be there too)")
    p.add_argument("--reach", type=float, default=None, metavar="D",
                   help="map units: the memory's say fades as exp(-(d/D)^2) with the distance "
                        "d to the nearest training instrument, so points far from all of them "
                        "play the decoder alone (default: full strength everywhere)")
    p.add_argument("--note-long", action="store_true",
                   help="remember each note's spectrum over the whole note only (the first "
                        "memories); by default the memory also keeps how the notes move: "
                        "level and spectrum per segment of the note (attack, decay, release)")
    p.add_argument("--device", default="cpu", help="where the decoder renders (default cpu)")
    p.set_defaults(func="pgesam_live.model.memory_build:run_memory")

    p = sub.add_parser("bench", help="performance figures")
    p.add_argument("--json", action="store_true")
    _add_common(p)
    p.add_argument("--only", default=None, help="comma-separated keys to measure")
    p.set_defaults(func="pgesam_live.tools.bench:run_bench")

    p = sub.add_parser("doctor", help="what works on this machine and what to do")
    _add_common(p, audio=True)
    p.set_defaults(func="pgesam_live.app.doctor:run_doctor")
    return ap


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("pgesam-live")
    except PackageNotFoundError:
        return "(not installed)"


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, line: str | None = None) -> str:
    return f"pgesam-live: warning: {message}\n"


def _subcommands(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _command_first(ap: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """Arguments that start with an option: `play`'s (`pgesam-live --web-port 9000`), or
    common options written before the command's name (`pgesam-live --model M doctor` ->
    `doctor --model M`)."""
    commands = _subcommands(ap)
    takes_value = {o for a in commands["play"]._actions if a.nargs != 0
                   for o in a.option_strings}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in takes_value else 1  # (`--opt=value` is one word)
    if i < len(args) and args[i] in commands and args[i] != "play":
        return [args[i], *args[:i], *args[i + 1:]]
    return ["play", *args]




def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PYO_GUI_WX", "0")
    ap = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
        args = _command_first(ap, args)
    ns = ap.parse_args(args)
    if ns.cmd is None:
        ap.print_help()
        return 2
    if ns.cmd == "export":  # the point's words, checked before a model loads (exit 2)
        from pgesam_live.app.export import export_usage_problem  # noqa: PLC0415

        problem = export_usage_problem(list(ns.where), ns.pitches)
        if problem is not None:
            _subcommands(ap)["export"].error(problem.removeprefix("export: "))
    mod_name, fn_name = ns.func.split(":")
    # Our warnings are one line for a performer, not a source location and a code line.
    warnings.formatwarning = _one_line_warning
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
        rc = fn(ns)
    except PgesamError as e:
        print(f"pgesam-live: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a file the command cannot read or write
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        fix = ("a file stands where a folder is needed: move it away or choose another path"
               if isinstance(e, FileExistsError | NotADirectoryError)
               else "check the path and its permissions")
        print(f"pgesam-live:{where}: {e.strerror or e}: {fix}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("PGESAM_DEBUG"):
            raise
        print(f"pgesam-live: internal error: {type(e).__name__}: {e} (PGESAM_DEBUG=1 shows "
              "the traceback; please report it)", file=sys.stderr)
        return 1
    return int(rc or 0)
