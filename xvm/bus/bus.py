"""One Bus class, two instances: port I/O and MMIO.

Devices are inserted at a base address with a length; they see offsets from
their base, never absolute addresses, so the same UART model serves COM1 and
COM2. Overlapping ranges are rejected at insert time. Accesses that hit no
device are handled here, in one place, as on a PC: reads float to all ones,
writes are dropped, and both are counted (`xvm run --stats` shows them).

    pio = Bus("pio")
    pio.insert(uart, 0x3F8, 8)
    pio.write(0x3F8, 1, ord("A"))   # uart.write(0, 1, 0x41)
"""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Optional

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - Python < 3.8
    Protocol = object  # type: ignore[assignment,misc]

from xvm.errors import ConfigError

log = logging.getLogger(__name__)


class BusDevice(Protocol):
    """What a device offers a bus: register reads and writes at an offset."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(ConfigError):
    """A device was placed where another already is (a machine-building bug or bad config)."""


class Bus:
    """Address-ordered map of (base, length) -> device with overlap checks.

    Dispatch takes a lock per device access because vCPU threads and I/O
    threads can reach the same device; devices themselves stay lock-free.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._bases: list[int] = []
        self._ranges: list[tuple[int, int, BusDevice]] = []
        self._lock = threading.Lock()
        self.unmapped_reads = 0
        self.unmapped_writes = 0
        self.accesses = 0

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        """Map `device` at [base, base+length); raise BusError on overlap."""
        if length <= 0:
            raise BusError(f"{self.name} bus: device {device!r} has empty range at {base:#x}")
        index = bisect.bisect_left(self._bases, base)
        if index > 0:
            prev_base, prev_len, prev = self._ranges[index - 1]
            if prev_base + prev_len > base:
                raise BusError(
                    f"{self.name} bus: {type(device).__name__} at {base:#x}+{length:#x} overlaps "
                    f"{type(prev).__name__} at {prev_base:#x}+{prev_len:#x}"
                )
        if index < len(self._ranges):
            next_base, next_len, nxt = self._ranges[index]
            if base + length > next_base:
                raise BusError(
                    f"{self.name} bus: {type(device).__name__} at {base:#x}+{length:#x} overlaps "
                    f"{type(nxt).__name__} at {next_base:#x}+{next_len:#x}"
                )
        self._bases.insert(index, base)
        self._ranges.insert(index, (base, length, device))

    def remove(self, base: int) -> None:
        """Unmap the device whose range starts at `base` (PCI BAR moves)."""
        index = bisect.bisect_left(self._bases, base)
        if index == len(self._bases) or self._bases[index] != base:
            raise BusError(f"{self.name} bus: nothing mapped at {base:#x}")
        del self._bases[index]
        del self._ranges[index]

    def lookup(self, addr: int) -> Optional[tuple[BusDevice, int]]:
        """(device, offset) for `addr`, or None when nothing is mapped there."""
        index = bisect.bisect_right(self._bases, addr) - 1
        if index < 0:
            return None
        base, length, device = self._ranges[index]
        if addr - base < length:
            return device, addr - base
        return None

    def devices(self) -> list[tuple[int, int, BusDevice]]:
        """(base, length, device) for every mapping, in address order."""
        return list(self._ranges)

    def read(self, addr: int, size: int) -> int:
        """Read `size` bytes at `addr`; all ones when no device answers."""
        self.accesses += 1
        hit = self.lookup(addr)
        if hit is None:
            self.unmapped_reads += 1
            return (1 << (8 * size)) - 1
        device, offset = hit
        with self._lock:
            return device.read(offset, size) & ((1 << (8 * size)) - 1)

    def write(self, addr: int, size: int, value: int) -> None:
        """Write `size` bytes at `addr`; dropped when no device answers."""
        self.accesses += 1
        hit = self.lookup(addr)
        if hit is None:
            self.unmapped_writes += 1
            return
        device, offset = hit
        with self._lock:
            device.write(offset, size, value & ((1 << (8 * size)) - 1))
