"""Generate pgesam.tosc, a TouchOSC (mk2, "TouchOSC" 1.x) layout for pgesam-live.

    python examples/touchosc/make_layout.py [--seq NAME ...] [--out FILE] [--check FILE]

A .tosc file is zlib-compressed XML (<lexml version='3'>, a tree of <node type='...'>
elements with <properties>, <values>, <messages> and <children>). This script writes it
from a small description so the layout stays reviewable in git; --check decompresses a file
and lists its controls and OSC addresses.

The page (1024 x 768, landscape):
  map        XY pad       /pgesam/xy u v        (u, v 0..1 -> the latent square [-1, 1]^2;
                                                 receives /pgesam/xy feedback after sync)
  keys       24 buttons   /pgesam/note PITCH 0.8  on press (C3..B4)
  tempo      fader        /pgesam/tempo BPM       (40..240)
  hush       button       /pgesam/hush            on press
  PANIC      button       /pgesam/panic           on press
  seq toggles             /pgesam/seq/start NAME on, /pgesam/seq/stop NAME off
  sync       button       /pgesam/hello           registers the surface for state feedback
"""

from __future__ import annotations

import argparse
import uuid
import zlib
from pathlib import Path
from xml.etree import ElementTree as ET

HERE = Path(__file__).resolve().parent
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _cdata_text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = text
    return el


class Node:
    """One TouchOSC control: type, properties, values, OSC messages, children."""

    def __init__(self, kind: str, name: str, frame: tuple[int, int, int, int],
                 color: tuple[float, float, float, float] = (0.25, 0.6, 1.0, 1.0)) -> None:
        self.kind = kind
        self.props: list[tuple[str, str, object]] = [
            ("s", "name", name), ("r", "frame", frame), ("c", "color", color)]
        self.values: list[tuple[str, str]] = []
        self.messages: list[dict] = []
        self.children: list[Node] = []

    def prop(self, ptype: str, key: str, value: object) -> Node:
        self.props.append((ptype, key, value))
        return self

    def value(self, key: str, default: str) -> Node:
        self.values.append((key, default))
        return self

    def osc(self, path: str, args: list[tuple[str, str, str, float, float]],
            triggers: list[tuple[str, str]], receive: bool = False) -> Node:
        """args: (type CONSTANT|VALUE, conversion INTEGER|FLOAT|STRING, value, min, max)."""
        self.messages.append({"path": path, "args": args, "triggers": triggers,
                              "receive": receive})
        return self

    def xml(self) -> ET.Element:
        node = ET.Element("node", ID=str(uuid.uuid5(uuid.NAMESPACE_URL, repr(self.props))),
                          type=self.kind)
        props = ET.SubElement(node, "properties")
        for ptype, key, value in self.props:
            p = ET.SubElement(props, "property", type=ptype)
            _cdata_text(p, "key", key)
            v = ET.SubElement(p, "value")
            if ptype == "r":
                for tag, num in zip("xywh", value, strict=True):  # type: ignore[call-overload]
                    _cdata_text(v, tag, str(num))
            elif ptype == "c":
                for tag, num in zip("rgba", value, strict=True):  # type: ignore[call-overload]
                    _cdata_text(v, tag, f"{num:g}")
            else:
                v.text = str(value)
        values = ET.SubElement(node, "values")
        for key, default in self.values:
            v = ET.SubElement(values, "value")
            _cdata_text(v, "key", key)
            _cdata_text(v, "locked", "0")
            _cdata_text(v, "lockedDefaultCurrent", "0")
            _cdata_text(v, "default", default)
            _cdata_text(v, "defaultPull", "0")
        if self.messages:
            msgs = ET.SubElement(node, "messages")
            for m in self.messages:
                osc = ET.SubElement(msgs, "osc")
                for tag, val in (("enabled", "1"), ("send", "1"),
                                 ("receive", "1" if m["receive"] else "0"), ("feedback", "0"),
                                 ("noDuplicates", "0"), ("connections", "1111111111")):
                    _cdata_text(osc, tag, val)
                trig = ET.SubElement(osc, "triggers")
                for var, cond in m["triggers"]:
                    t = ET.SubElement(trig, "trigger")
                    _cdata_text(t, "var", var)
                    _cdata_text(t, "condition", cond)
                path = ET.SubElement(osc, "path")
                _partial(path, "CONSTANT", "STRING", m["path"], 0, 1)
                args = ET.SubElement(osc, "arguments")
                for a in m["args"]:
                    _partial(args, *a)
        if self.children:
            kids = ET.SubElement(node, "children")
            for c in self.children:
                kids.append(c.xml())
        return node


def _partial(parent: ET.Element, ptype: str, conversion: str, value: str, lo: float,
             hi: float) -> None:
    p = ET.SubElement(parent, "partial")
    _cdata_text(p, "type", ptype)
    _cdata_text(p, "conversion", conversion)
    _cdata_text(p, "value", value)
    _cdata_text(p, "scaleMin", f"{lo:g}")
    _cdata_text(p, "scaleMax", f"{hi:g}")


def button(name: str, frame: tuple[int, int, int, int], path: str,
           args: list[tuple[str, str, str, float, float]],
           color: tuple[float, float, float, float] = (0.25, 0.6, 1.0, 1.0)) -> Node:
    """A momentary button sending `path args` when pressed (x rises)."""
    b = Node("BUTTON", name, frame, color).prop("i", "buttonType", 0)
    b.value("x", "0").value("touch", "false")
    return b.osc(path, args, [("x", "RISE")])


def label(text: str, frame: tuple[int, int, int, int]) -> Node:
    lab = Node("LABEL", f"label_{text}", frame, (1, 1, 1, 1)).prop("s", "text", text)
    return lab.prop("b", "interactive", 0)


def build(sequences: list[str]) -> Node:
    root = Node("GROUP", "pgesam", (0, 0, 1024, 768), (0.08, 0.08, 0.1, 1))
    kids = root.children

    xy = Node("XY", "map", (16, 16, 600, 600))
    xy.value("x", "0.5").value("y", "0.5").value("touch", "false")
    # TouchOSC's pad y grows downwards; scaled 1..0 so up on the pad is +y on the map
    xy.osc("/pgesam/xy", [("VALUE", "FLOAT", "x", 0, 1), ("VALUE", "FLOAT", "y", 1, 0)],
           [("x", "ANY"), ("y", "ANY")], receive=True)
    kids.append(xy)

    tempo = Node("FADER", "tempo", (640, 56, 70, 560)).prop("i", "orientation", 0)
    tempo.value("x", "0.4").value("touch", "false")
    tempo.osc("/pgesam/tempo", [("VALUE", "FLOAT", "x", 40, 240)], [("x", "ANY")])
    kids += [tempo, label("tempo", (640, 16, 70, 36))]

    kids.append(button("hush", (730, 16, 130, 90), "/pgesam/hush", [],
                       (0.9, 0.7, 0.2, 1)))
    kids.append(button("panic", (878, 16, 130, 90), "/pgesam/panic", [], (1.0, 0.2, 0.2, 1)))
    kids += [label("hush", (730, 106, 130, 30)), label("PANIC", (878, 106, 130, 30))]
    kids.append(button("sync", (878, 526, 130, 90), "/pgesam/hello", [], (0.5, 0.5, 0.5, 1)))
    kids.append(label("sync", (878, 616, 130, 24)))

    for i, name in enumerate(sequences[:6]):
        y = 150 + i * 62
        t = Node("BUTTON", f"seq_{name}", (730, y, 130, 52), (0.3, 0.9, 0.5, 1))
        t.prop("i", "buttonType", 1)   # toggle
        t.value("x", "0").value("touch", "false")
        t.osc("/pgesam/seq/start", [("CONSTANT", "STRING", name, 0, 1)], [("x", "RISE")])
        t.osc("/pgesam/seq/stop", [("CONSTANT", "STRING", name, 0, 1)], [("x", "FALL")])
        kids += [t, label(name, (866, y, 140, 52))]

    width = 1024 - 32
    for i in range(24):   # C3 .. B4
        pitch = 48 + i
        name = f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"
        black = "#" in name
        x = 16 + round(i * width / 24)
        color = (0.15, 0.15, 0.2, 1) if black else (0.9, 0.9, 0.95, 1)
        kids.append(button(f"key_{name}", (x, 640, round(width / 24) - 4, 112), "/pgesam/note",
                           [("CONSTANT", "INTEGER", str(pitch), 0, 1),
                            ("CONSTANT", "FLOAT", "0.8", 0, 1)], color))
    return root


def write(root: Node, out: Path) -> None:
    doc = ET.Element("lexml", version="3")
    doc.append(root.xml())
    text = "<?xml version='1.0' encoding='UTF-8'?>" + ET.tostring(doc, encoding="unicode")
    out.write_bytes(zlib.compress(text.encode("utf-8")))


def check(path: Path) -> list[str]:
    """Decompress a .tosc file and list `type name: address ...` per OSC message."""
    doc = ET.fromstring(zlib.decompress(path.read_bytes()).decode("utf-8"))
    out = []
    for node in doc.iter("node"):
        name = next((p.findtext("value") for p in node.iter("property")
                     if p.findtext("key") == "name"), "?")
        for osc in node.findall("messages/osc"):
            args = [a.findtext("value") for a in osc.findall("arguments/partial")]
            out.append(f"{node.get('type')} {name}: {osc.findtext('path/partial/value')} "
                       f"{' '.join(a or '' for a in args)}".rstrip())
    return out


def _patch_sequences() -> list[str]:
    try:
        import yaml
    except ImportError:
        return []
    names: list[str] = []
    for p in sorted((HERE.parents[1] / "patches").glob("*.y*ml")):
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        names += [n for n in (data.get("sequences") or {}) if n not in names]
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", action="append", help="a sequence toggle (repeat; up to 6)")
    ap.add_argument("--out", default=str(HERE / "pgesam.tosc"))
    ap.add_argument("--check", metavar="FILE", help="list a .tosc file's OSC messages")
    ns = ap.parse_args()
    if ns.check:
        print("\n".join(check(Path(ns.check))))
        return
    seqs = ns.seq or _patch_sequences()[:6] or ["arp", "bass", "pad"]
    write(build(seqs), Path(ns.out))
    print(f"wrote {ns.out} (sequence toggles: {', '.join(seqs[:6])})")


if __name__ == "__main__":
    main()
