"""Where timed devices get the time from.

Timed devices (PIT, RTC, LAPIC timer) never read a host clock themselves: they
are handed a Clock, and catch up lazily when the machine calls
`tick(now_ns)` (STYLE.md 12). The bt engine runs on a VirtualClock that it
advances from the guest instruction count, so a run is deterministic; the kvm
engine and `--clock host` use HostClock.

    clock = VirtualClock()
    pit = I8254Pit(irq0, clock)
    clock.advance(1_000_000)       # one millisecond of guest time
    pit.tick(clock.now_ns())
"""

from __future__ import annotations

import threading
import time

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

NS_PER_SEC = 1_000_000_000


class Clock(Protocol):
    """A monotonic nanosecond counter."""

    def now_ns(self) -> int: ...


class HostClock:
    """Wall time as the host's monotonic clock sees it (kvm engine, `--clock host`)."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class VirtualClock:
    """Guest time that moves only when told to (bt engine, tests).

    advance() may be called from the vCPU thread while an I/O thread reads
    now_ns(), so updates are serialized; time never goes backwards.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        return self._now

    def advance(self, delta_ns: int) -> int:
        """Move time forward by `delta_ns` (>= 0) and return the new time."""
        if delta_ns < 0:
            raise ValueError(f"VirtualClock cannot go backwards (advance by {delta_ns} ns)")
        with self._lock:
            self._now += delta_ns
            return self._now

    def advance_to(self, when_ns: int) -> int:
        """Move time forward to `when_ns`; earlier times leave the clock where it is."""
        with self._lock:
            if when_ns > self._now:
                self._now = when_ns
            return self._now
