"""Fixtures shared by the device tests: an IrqLine that records every level change."""

from __future__ import annotations

import pytest

from xvm.bus.irq import NullIrqLine


@pytest.fixture
def irq() -> NullIrqLine:
    """xvm's NullIrqLine: it keeps the current `level` and counts rising edges in `raised`."""
    return NullIrqLine()
