"""The README's picture of the web page (docs/web-page.png), taken in headless Chromium.

Start an instrument first (the bundled model, no sound card needed), then take the picture:

    pgesam-live play --audio record --no-repl &
    python scripts/web_screenshot.py --url http://127.0.0.1:8765/ --out docs/web-page.png

It loads the demo patch `drift-arpeggio.yaml` (its points, its sequence running), goes to a
training instrument by name (`at violin`), marks a bookmark, plays a key, points at a
training instrument (its name on hover) and listens, as a performer would, then saves the
page. Needs Debian's `chromium` and Playwright's Python API (`make system-deps setup`).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def take(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 880})
        page.goto(url)
        page.wait_for_function("document.getElementById('conn').textContent === 'connected'")
        for line in ("hush", "load drift-arpeggio.yaml", "at violin", "at 0.2 0.1",
                     "mark mine", "glide 0.05 -0.3 8"):
            page.fill("#cmd", line)
            page.press("#cmd", "Enter")
            time.sleep(0.3)
        page.click("#listen")
        page.keyboard.down("d")
        time.sleep(1.5)
        # the pointer on a training instrument: its name
        box = page.locator("#map").bounding_box()
        assert box is not None
        dot = page.locator("#dots circle").nth(40).bounding_box()
        assert dot is not None
        page.mouse.move(dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
        time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        # A 128-colour palette: a third of the bytes, and the history keeps every version.
        from PIL import Image

        Image.open(out).convert("RGB").quantize(128).save(out, optimize=True)
        page.keyboard.up("d")
        page.fill("#cmd", "hush")
        page.press("#cmd", "Enter")
        time.sleep(0.3)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8765/")
    ap.add_argument("--out", default="docs/web-page.png")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ns = ap.parse_args()
    take(ns.url, Path(ns.out), ns.chromium)
    print(ns.out)


if __name__ == "__main__":
    main()
