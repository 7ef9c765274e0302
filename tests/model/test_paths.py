"""Output paths are checked before the work; nothing is left behind by the check."""

from __future__ import annotations

import os
from pathlib import Path

from pgesam_live.model.paths import write_problem


def test_write_problem(tmp_path: Path) -> None:
    assert write_problem(tmp_path / "a.wav") is None
    assert write_problem(tmp_path / "new" / "dirs" / "a.wav") is None  # made by the writer
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a folder" in str(write_problem(tmp_path / "afile" / "a.wav"))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert write_problem("plain.wav") is None  # no folder part: the working directory
    finally:
        os.chdir(cwd)
    # A dangling link is judged by where it points.
    (tmp_path / "link.wav").symlink_to(tmp_path / "afile" / "x.wav")
    assert "is a file, not a folder" in str(write_problem(tmp_path / "link.wav"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "link.wav"]
