"""Port 0x80, the BIOS POST-code port.

Linux writes it for I/O delays (outb_p, arch/x86/include/asm/io.h, and the
io_delay= default), firmware writes progress codes. A PC's POST card latches
the last byte; reading it back is what some diagnostics do.
"""

from __future__ import annotations


class PostCode:
    """Remembers the last value written; reads return it."""

    def __init__(self) -> None:
        self.last = 0
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        if offset != 0:
            return (1 << (8 * size)) - 1
        return self.last

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return
        self.last = value & 0xFF
        self.writes += 1
