"""Fakes shared by the device tests: an IrqLine that records every level change."""

from __future__ import annotations

import pytest


class RecordingIrq:
    """IrqLine fake: current level and number of rising edges."""

    def __init__(self) -> None:
        self.level = False
        self.raised = 0

    def set_level(self, high: bool) -> None:
        if high and not self.level:
            self.raised += 1
        self.level = high


@pytest.fixture
def irq() -> RecordingIrq:
    return RecordingIrq()
