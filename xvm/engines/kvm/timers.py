"""Tick xvm's timed devices from a host thread on the kvm engine (e.g. the MC146818 RTC's IRQ 8).

KVM keeps the PIT and the LAPIC timers in the kernel, but devices modelled in
Python (the RTC's periodic, alarm and update-ended interrupts) only change
their IRQ line when someone calls `tick(now_ns)` (STYLE.md 12). On bt the run
loop does that; on kvm no vCPU loop sees time pass, so one thread per VM
sleeps until the earliest `next_deadline()` and ticks every device then. The
IRQ line it drives is the in-kernel irqchip's (KVM_IRQ_LINE).

The devices are shared between that thread and the vCPU threads, so every bus
access goes through the wrapper add() returns: it takes the same lock, and
wakes the thread afterwards, since a register access can move the deadline
(enabling PIE, changing the rate, reading register C to lower the line).

    timers = DeviceTimers(HostClock())
    pio.insert(timers.add(rtc), PORT_RTC, 2)
    ...
    timers.close()
"""

from __future__ import annotations

import threading
from typing import Optional

from xvm.devices.clock import NS_PER_SEC, Clock


class DeviceTimers:
    """One thread that ticks its devices at their deadlines (module docstring)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._devices: list = []
        self._thread: Optional[threading.Thread] = None
        self._closing = False
        #: How many times the thread woke and ticked (tests and --stats read it).
        self.ticks = 0

    def add(self, device) -> _TimedDevice:
        """Drive `device` (tick/next_deadline); returns the wrapper to put on the bus."""
        with self._cond:
            self._devices.append(device)
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="kvm-device-timers", daemon=True)
                self._thread.start()
            self._cond.notify()
        return _TimedDevice(device, self._cond)

    def close(self) -> None:
        """Stop the thread (idempotent); devices are not ticked afterwards."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closing:
                now = self._clock.now_ns()
                for device in self._devices:
                    device.tick(now)
                self.ticks += 1
                deadlines = [d for d in (device.next_deadline() for device in self._devices) if d is not None]
                # A deadline already past (the line went low meanwhile) is served on the next pass at once.
                timeout = None if not deadlines else max(min(deadlines) - self._clock.now_ns(), 0) / NS_PER_SEC
                self._cond.wait(timeout)


class _TimedDevice:
    """A BusDevice whose accesses hold the timer lock and then wake the timer thread."""

    def __init__(self, device, cond: threading.Condition) -> None:
        self._device = device
        self._cond = cond

    def read(self, offset: int, size: int) -> int:
        with self._cond:
            value = self._device.read(offset, size)
            self._cond.notify()
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._cond:
            self._device.write(offset, size, value)
            self._cond.notify()
