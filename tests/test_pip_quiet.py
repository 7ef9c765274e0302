# ruff: noqa: E501  (pip's lines as pip prints them)
"""scripts/pip_quiet.py: what `make setup` hides of pip's output, and what it keeps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pip_quiet.py"
spec = importlib.util.spec_from_file_location("pip_quiet", SCRIPT)
assert spec is not None and spec.loader is not None
pip_quiet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pip_quiet)

CORRECT_INSTALL = """\
  /tmp/pip-build-env-x/overlay/lib/python3.11/site-packages/setuptools/command/editable_wheel.py:354: BuildBackendWarning: Editable installation.
  !!

          ********************************************************************************
          Please be careful with folders in your working directory with the same
          name as your package as they may take precedence during imports.
          ********************************************************************************

  !!
    with strategy, WheelFile(wheel_path, "w") as wheel_obj:
ERROR: pip's dependency resolver does not currently take into account all the packages that are installed. This behaviour is the source of the following dependency conflicts.
pesto-pitch 2.0.1 requires torchaudio>=2.0.2, which is not installed.
encodec 0.1.1 requires torchaudio, which is not installed.
WARNING: Location 'file:///opt/pypi-more/simple/fsspec/' is ignored: it is neither a file nor a directory.
Successfully installed pgesam-live
"""


def test_a_correct_install_reads_as_one() -> None:
    out = "".join(pip_quiet.filtered(CORRECT_INSTALL.splitlines(keepends=True)))
    assert out == "Successfully installed pgesam-live\n"


def test_a_real_conflict_and_real_errors_stay_visible() -> None:
    real = ("ERROR: pip's dependency resolver does not currently take into account all the "
            "packages that are installed. This behaviour is the source of the following "
            "dependency conflicts.\n"
            "encodec 0.1.1 requires torchaudio, which is not installed.\n"
            "foo 1.0 requires numpy<2, which is not installed.\n"
            "ERROR: Could not find a version that satisfies the requirement torch==9\n")
    assert "".join(pip_quiet.filtered(real.splitlines(keepends=True))) == real
