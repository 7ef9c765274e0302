"""Filter pip's output during `make setup`: drop what a correct install prints that reads as a
failure, keep everything else (real errors stay visible; the exit status is pip's own).

Dropped:
- the dependency-resolver ERROR block when every conflict it lists is a package declaring
  `torchaudio` (encodec, pesto-pitch: installed with --no-deps on purpose and given a stub,
  README "Set-up notes");
- setuptools' "Editable installation" warning box (folders named like the package);
- pip's note on index locations of this machine's pip configuration that do not exist.

Usage: pip ... 2>&1 | python3 scripts/pip_quiet.py   (stdlib only: runs before the venv)
"""

from __future__ import annotations

import re
import sys

RESOLVER = "ERROR: pip's dependency resolver does not currently take into account"
CONFLICT = re.compile(r"^\S+ \S+ requires (\S+?)(?:[<>=!~,].*)?, which is not installed\.$")
EXPECTED_MISSING = {"torchaudio"}
BOX_START = re.compile(r"BuildBackendWarning: Editable installation\.|"
                       r"SetuptoolsDeprecationWarning|_DeprecatedInstaller")
LOCATION = re.compile(r"^WARNING: Location '.*' is ignored: "
                      r"it is neither a file nor a directory\.$")


def filtered(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        text = line.rstrip("\n")
        if text.startswith(RESOLVER):
            j = i + 1
            conflicts = []
            while j < len(lines) and CONFLICT.match(lines[j].strip()):
                conflicts.append(CONFLICT.match(lines[j].strip()).group(1))  # type: ignore
                j += 1
            if conflicts and set(conflicts) <= EXPECTED_MISSING:
                i = j
                continue
        if BOX_START.search(text):
            # the box: "!!", blank, stars, text, stars, blank, "!!", then the source line
            j = i + 1
            bangs = 0
            while j < len(lines) and bangs < 2 and j - i < 40:
                if lines[j].strip() == "!!":
                    bangs += 1
                j += 1
            if bangs == 2:
                if j < len(lines) and lines[j].startswith("    "):
                    j += 1  # the code line the warning points at
                i = j
                continue
        if LOCATION.match(text):
            i += 1
            continue
        out.append(line)
        i += 1
    return out


def main() -> int:
    sys.stdout.writelines(filtered(sys.stdin.readlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
