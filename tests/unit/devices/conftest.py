"""Fakes shared by the device tests: an IrqLine that records every level change."""

from __future__ import annotations

import pytest


class RecordingIrq:
    """IrqLine fake: current level, number of rising edges, full history."""

    def __init__(self) -> None:
        self.level = False
        self.raised = 0
        self.history: list = []

    def set_level(self, high: bool) -> None:
        if high and not self.level:
            self.raised += 1
        self.level = high
        self.history.append(high)


@pytest.fixture
def irq() -> RecordingIrq:
    return RecordingIrq()
