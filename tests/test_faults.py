"""Errors caught and carried on with are logged and counted, never silent."""

from __future__ import annotations

import logging

import pytest

from pgesam_live import faults


def test_logged_counts_and_logs_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    before = faults.total()
    with caplog.at_level(logging.DEBUG, logger="pgesam_live.faults"):
        with faults.logged("test: a broken step"):
            raise RuntimeError("boom")
        with faults.logged("test: a broken step"):
            raise RuntimeError("again")
    assert faults.FAULTS["test: a broken step"] == 2 and faults.total() == before + 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "test: a broken step" in warnings[0].getMessage()


def test_logged_lets_keyboard_interrupt_through() -> None:
    with pytest.raises(KeyboardInterrupt), faults.logged("test: ctrl-c"):
        raise KeyboardInterrupt
