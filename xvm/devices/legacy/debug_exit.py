"""QEMU's isa-debug-exit: a guest ends the VM with a status by writing one port.

Test guests and xvm's `run -- CMD` path write the exit value to port 0xF4.
QEMU turns a write of v into process exit status (v << 1) | 1, so a status
can never be 0 (which would look like a clean power-off); xvm's machine does
the same mapping, this device only reports the raw value.

    pio.insert(DebugExit(machine.request_exit), PORT_DEBUG_EXIT, 1)
"""

from __future__ import annotations

from typing import Callable


class DebugExit:
    """Port 0xF4 (QEMU hw/misc/debugexit.c): writes of 1 to 4 bytes call on_exit(value)."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def read(self, offset: int, size: int) -> int:
        # Nothing drives the bus on a read, as with QEMU's device.
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0 or not 1 <= size <= 4:
            return
        self._on_exit(value & ((1 << (8 * size)) - 1))
