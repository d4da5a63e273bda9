"""The one exit dispatcher both engines end in.

The kvm engine returns IoIn/IoOut/MmioRead/MmioWrite from KVM_RUN and the
vCPU loop hands them here; the bt engine calls `serve_io` in the middle of an
IN/OUT or MMIO instruction. Either way the PIO or MMIO bus finds the device,
and the device never learns which engine runs the guest. Model: Firecracker
vstate/vcpu.rs (handle_kvm_exit), kvmtool kvm-cpu.c.
"""

from __future__ import annotations

from collections import Counter

from xvm.bus import Bus
from xvm.engines.base import IoIn, IoOut, MmioRead, MmioWrite, VcpuExit


class ExitDispatcher:
    """Serves device-access exits from the PIO and MMIO buses; counts exits by kind."""

    def __init__(self, pio: Bus, mmio: Bus) -> None:
        self.pio = pio
        self.mmio = mmio
        self.counts: Counter = Counter()

    def serve_io(self, exit_: VcpuExit) -> bool:
        """Serve a device access; False when `exit_` is not one (the caller handles it)."""
        kind = type(exit_)
        self.counts[kind.__name__] += 1
        if kind is IoOut:
            size, data, port, write = exit_.size, exit_.data, exit_.port, self.pio.write
            for start in range(0, exit_.count * size, size):
                write(port, size, int.from_bytes(data[start:start + size], "little"))
        elif kind is IoIn:
            size, data, port, read = exit_.size, exit_.data, exit_.port, self.pio.read
            for start in range(0, exit_.count * size, size):
                data[start:start + size] = read(port, size).to_bytes(size, "little")
        elif kind is MmioWrite:
            self._mmio_write(exit_.address, bytes(exit_.data))
        elif kind is MmioRead:
            data = exit_.data
            data[:] = self._mmio_read(exit_.address, len(data))
        else:
            return False
        return True

    def _mmio_read(self, address: int, length: int) -> bytes:
        # Bus accesses are at most 8 bytes; wider accesses (SSE moves) are split.
        out = bytearray()
        while length > 0:
            size = 8 if length >= 8 else (4 if length >= 4 else (2 if length >= 2 else 1))
            out += self.mmio.read(address, size).to_bytes(size, "little")
            address += size
            length -= size
        return bytes(out)

    def _mmio_write(self, address: int, data: bytes) -> None:
        offset = 0
        while offset < len(data):
            left = len(data) - offset
            size = 8 if left >= 8 else (4 if left >= 4 else (2 if left >= 2 else 1))
            self.mmio.write(address + offset, size, int.from_bytes(data[offset:offset + size], "little"))
            offset += size
