"""Guest RAM as a list of regions, addressed by guest-physical address.

Every user of guest memory (loaders, devices doing DMA, the bt engine, the
snapshot writer) goes through GuestMemory; only the kvm engine looks at the
host address of a region, to hand the same bytes to KVM_SET_USER_MEMORY_REGION.
Accesses that cross a region boundary work; accesses that leave RAM raise
GuestMemoryError, and the caller decides what the guest sees.

    mem = GuestMemory.allocate(256 * MiB)
    mem.write(0x1000, b"hello")
    assert mem.read(0x1000, 5) == b"hello"
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from xvm.arch.x86 import layout
from xvm.errors import ConfigError, GuestMemoryError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def ram_layout(ram_size: int) -> list[tuple[int, int]]:
    """(guest_base, size) of each RAM region for `ram_size` bytes of RAM.

    RAM below 4 GiB stops at the 32-bit MMIO hole; the remainder resumes at 4 GiB.
    """
    low = min(ram_size, layout.MMIO_HOLE_START)
    regions = [(0, low)]
    if ram_size > low:
        regions.append((layout.HIGH_RAM_START, ram_size - low))
    return regions


@dataclass
class MemoryRegion:
    """One contiguous range of guest RAM and the host mapping that backs it.

    `fd` is the memfd (or -1 for an anonymous mapping) so that a snapshot or a
    vhost-style backend can map the same pages.
    """

    guest_base: int
    size: int
    mapping: mmap.mmap
    fd: int = -1

    @property
    def guest_end(self) -> int:
        return self.guest_base + self.size

    def host_address(self) -> int:
        """Host virtual address of the mapping (for KVM_SET_USER_MEMORY_REGION).

        SAFETY: the address stays valid while `mapping` is open; GuestMemory.close()
        releases the ctypes export before unmapping.
        """
        if self._anchor is None:
            import ctypes

            self._anchor = ctypes.c_char.from_buffer(self.mapping)
            self._address = ctypes.addressof(self._anchor)
        return self._address

    _anchor: Optional[object] = None
    _address: int = 0


class GuestMemory:
    """Guest-physical address space made of non-overlapping RAM regions."""

    def __init__(self, regions: list[MemoryRegion]) -> None:
        self.regions = sorted(regions, key=lambda r: r.guest_base)
        self.size = sum(r.size for r in self.regions)

    @classmethod
    def allocate(cls, ram_size: int, name: str = "xvm-ram") -> GuestMemory:
        """Allocate `ram_size` bytes of zeroed RAM laid out around the MMIO hole."""
        if ram_size <= 0 or ram_size % layout.PAGE_SIZE:
            raise ConfigError(f"guest RAM size {ram_size} is not a positive multiple of 4 KiB")
        regions = []
        for base, size in ram_layout(ram_size):
            fd = -1
            memfd_create = getattr(os, "memfd_create", None)
            if memfd_create is not None:
                fd = memfd_create(name, getattr(os, "MFD_CLOEXEC", 1))
                os.ftruncate(fd, size)
                mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            else:
                mapping = mmap.mmap(-1, size)
            regions.append(MemoryRegion(base, size, mapping, fd))
        return cls(regions)

    def close(self) -> None:
        """Unmap every region and close its memfd."""
        for region in self.regions:
            region._anchor = None
            # A memoryview may still be alive somewhere; the mapping then dies with it.
            with contextlib.suppress(BufferError):
                region.mapping.close()
            if region.fd >= 0:
                os.close(region.fd)
                region.fd = -1

    # --- lookup -----------------------------------------------------------
    def find_region(self, gpa: int) -> MemoryRegion:
        """The region holding `gpa`; GuestMemoryError if it is not RAM."""
        for region in self.regions:
            if region.guest_base <= gpa < region.guest_end:
                return region
        raise GuestMemoryError(f"guest-physical address {gpa:#x} is not RAM")

    def contains(self, gpa: int, length: int = 1) -> bool:
        """True when [gpa, gpa+length) is entirely RAM (possibly spanning regions)."""
        if gpa < 0 or length < 0:
            return False
        try:
            for _ in self._chunks(gpa, length):
                pass
        except GuestMemoryError:
            return False
        return True

    def _chunks(self, gpa: int, length: int) -> Iterator[tuple[MemoryRegion, int, int]]:
        """Split [gpa, gpa+length) into (region, offset, count) pieces, checking bounds."""
        if gpa < 0 or length < 0:
            raise GuestMemoryError(f"invalid guest access at {gpa:#x} length {length}")
        while length > 0:
            region = self.find_region(gpa)
            offset = gpa - region.guest_base
            count = min(length, region.size - offset)
            yield region, offset, count
            gpa += count
            length -= count

    # --- bytes ------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        """Copy `length` bytes out of guest RAM."""
        parts = [region.mapping[offset:offset + count] for region, offset, count in self._chunks(gpa, length)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, gpa: int, data: bytes) -> None:
        """Copy `data` into guest RAM (checked before anything is written)."""
        chunks = list(self._chunks(gpa, len(data)))
        done = 0
        for region, offset, count in chunks:
            region.mapping[offset:offset + count] = data[done:done + count]
            done += count

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        """Set `length` bytes starting at `gpa` to `byte`."""
        for region, offset, count in list(self._chunks(gpa, length)):
            region.mapping[offset:offset + count] = bytes([byte]) * count

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy window on guest RAM; the range must lie in one region.

        Used for DMA. The caller must drop the view before GuestMemory.close().
        """
        region = self.find_region(gpa)
        offset = gpa - region.guest_base
        if length < 0 or offset + length > region.size:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} crosses the end of RAM region")
        return memoryview(region.mapping)[offset:offset + length]

    # --- integers (little-endian) -----------------------------------------
    def read_u8(self, gpa: int) -> int:
        return self.read(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return _U16.unpack(self.read(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack(self.read(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack(self.read(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.write(gpa, bytes((value & 0xFF,)))

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, _U16.pack(value & 0xFFFF))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, _U32.pack(value & 0xFFFFFFFF))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))
