"""DeviceTimers: the kvm engine's thread that ticks Python-modelled timed devices (the RTC's IRQ 8).

Real threads and the host clock, but no /dev/kvm: the RTC drives xvm's
NullIrqLine here instead of KVM_IRQ_LINE. Waits are bounded generously and
nothing asserts how fast the ticks come.
"""

from __future__ import annotations

import threading

from xvm.bus.irq import NullIrqLine
from xvm.devices.clock import HostClock
from xvm.devices.legacy.mc146818_rtc import Mc146818Rtc
from xvm.engines.kvm.timers import DeviceTimers

WAIT_S = 10.0


class WatchedLine(NullIrqLine):
    """A NullIrqLine that lets a test wait for the line to go high."""

    def __init__(self) -> None:
        super().__init__()
        self.high = threading.Event()

    def set_level(self, high: bool) -> None:
        super().set_level(high)
        if high:
            self.high.set()


def cmos(device, index: int, value=None):
    device.write(0, 1, index)
    if value is None:
        return device.read(1, 1)
    device.write(1, 1, value)
    return None


def test_rtc_periodic_interrupts_arrive_and_are_acknowledged() -> None:
    line = WatchedLine()
    timers = DeviceTimers(HostClock())
    try:
        rtc = timers.add(Mc146818Rtc(line, HostClock()))
        assert not line.high.wait(0.05)  # PIE off: nothing to tick
        cmos(rtc, 0x0A, 0x2F)  # 2 Hz
        cmos(rtc, 0x0A, 0x23)  # 8192 Hz: a rate change must reach the sleeping thread
        cmos(rtc, 0x0B, 0x02 | 0x40)  # PIE
        for _ in range(3):
            assert line.high.wait(WAIT_S), "no periodic interrupt"
            line.high.clear()
            assert cmos(rtc, 0x0C) & 0xC0 == 0xC0  # IRQF | PF
            assert not line.level  # reading register C lowered the line
        assert line.raised >= 3
    finally:
        timers.close()


def test_close_stops_the_thread() -> None:
    line = WatchedLine()
    timers = DeviceTimers(HostClock())
    rtc = timers.add(Mc146818Rtc(line, HostClock()))
    cmos(rtc, 0x0A, 0x23)
    cmos(rtc, 0x0B, 0x02 | 0x40)
    assert line.high.wait(WAIT_S)
    timers.close()
    assert not any(t.name == "kvm-device-timers" and t.is_alive() for t in threading.enumerate())
    cmos(rtc, 0x0C)  # lowers the line; nobody raises it again
    line.high.clear()
    assert not line.high.wait(0.05)
    timers.close()  # idempotent
