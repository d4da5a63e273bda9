"""A PCI function's 256-byte configuration space (PCI Local Bus 3.0 chapter 6) and its BARs.

The type-0 header is kept as bytes with a per-byte writable mask, so guest
writes can only change what the spec lets them change (command bits, BAR
address bits, interrupt line, capability fields the owner marks writable).
Reads of anything else return the device's constants.

BAR sizing (6.2.5.1): the driver writes all ones and reads back; the address
bits below the BAR's size are read-only zero, so what comes back is the size
mask plus the type bits. A 64-bit memory BAR takes two registers, the upper
one fully writable. Memory BARs are decoded only while COMMAND.MEMORY is set;
whenever the decoded set of BARs changes (COMMAND written, a BAR moved) the
function tells its `BarMapper`, which maps or unmaps the range on the MMIO bus.

Capabilities are a linked list starting at CAPABILITIES_POINTER (0x34), each
entry {cap_id, next, body...} at a dword-aligned offset from 0x40 on; STATUS
bit 4 says the list exists.

    cs = PciConfigSpace(vendor_id=0x1AF4, device_id=0x1044, class_code=0x00FF00)
    cs.add_bar(0, 0x1000)                    # 32-bit memory BAR, 4 KiB
    offset = cs.add_capability(0x11, body)   # MSI-X
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

CONFIG_SPACE_SIZE = 256

# Type-0 header registers (PCI 3.0 6.1; Linux include/uapi/linux/pci_regs.h).
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09  # programming interface; class code occupies 0x09-0x0B
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_COMMAND_IO = 0x1  # respond to I/O space accesses
PCI_COMMAND_MEMORY = 0x2  # respond to memory space accesses
PCI_COMMAND_MASTER = 0x4  # bus mastering (DMA)
PCI_COMMAND_INTX_DISABLE = 0x400  # INTx emulation disable
PCI_STATUS_INTERRUPT = 0x08  # INTx asserted
PCI_STATUS_CAP_LIST = 0x10  # capability list present

PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08

PCI_HEADER_TYPE_NORMAL = 0
PCI_NUM_BARS = 6
#: Capabilities live after the 64-byte standard header.
PCI_CAP_START = 0x40

PCI_CAP_ID_VNDR = 0x09  # vendor specific (virtio uses it)
PCI_CAP_ID_MSIX = 0x11

INTX_PIN_A = 1


class BarMapper(Protocol):
    """Where a PCI function's memory BARs get decoded (the MMIO bus, through pci_devices.py)."""

    def map(self, base: int, length: int, device: object) -> bool:
        """Decode [base, base+length) to `device`; False when the range is taken (not decoded)."""

    def unmap(self, base: int) -> None: ...


class BarHandler(Protocol):
    """Register accesses inside one BAR, at offsets from its base."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass
class Bar:
    """One memory BAR: its register index, size (a power of two >= 16) and who serves it."""

    index: int
    size: int
    handler: BarHandler
    is64: bool = False
    prefetchable: bool = False
    #: Address currently mapped on the bus (None: not decoded).
    mapped_at: Optional[int] = None


class PciConfigSpace:
    """Configuration space of one PCI function (header type 0)."""

    def __init__(self, vendor_id: int, device_id: int, class_code: int, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0, interrupt_pin: int = 0,
                 header_type: int = PCI_HEADER_TYPE_NORMAL) -> None:
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        struct.pack_into("<HH", self.data, PCI_VENDOR_ID, vendor_id, device_id)
        struct.pack_into("<I", self.data, PCI_REVISION_ID, (class_code & 0xFFFFFF) << 8 | revision & 0xFF)
        self.data[PCI_HEADER_TYPE] = header_type
        struct.pack_into("<HH", self.data, PCI_SUBSYSTEM_VENDOR_ID, subsystem_vendor_id, subsystem_id)
        self.data[PCI_INTERRUPT_PIN] = interrupt_pin
        self._set_wmask(PCI_COMMAND, 2, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
                        | PCI_COMMAND_INTX_DISABLE)
        self._set_wmask(PCI_CACHE_LINE_SIZE, 1, 0xFF)
        self._set_wmask(PCI_LATENCY_TIMER, 1, 0xFF)
        self._set_wmask(PCI_INTERRUPT_LINE, 1, 0xFF)
        self.bars: dict = {}
        self._last_cap: Optional[int] = None
        self._next_cap = PCI_CAP_START
        self.mapper: Optional[BarMapper] = None

    # --- building ----------------------------------------------------------------------
    def _set_wmask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset:offset + size] = mask.to_bytes(size, "little")

    def add_bar(self, index: int, size: int, handler: BarHandler, is64: bool = False,
                prefetchable: bool = False) -> Bar:
        """Declare memory BAR `index` (and `index+1` for a 64-bit BAR) of `size` bytes."""
        if size < 16 or size & (size - 1):
            raise ValueError(f"BAR size {size:#x} is not a power of two of at least 16")
        registers = {index, index + 1} if is64 else {index}
        taken = set()
        for other in self.bars.values():
            taken |= {other.index, other.index + 1} if other.is64 else {other.index}
        if index < 0 or max(registers) >= PCI_NUM_BARS or registers & taken:
            raise ValueError(f"BAR {index} is out of range or taken")
        bar = Bar(index, size, handler, is64, prefetchable)
        self.bars[index] = bar
        flags = (PCI_BASE_ADDRESS_MEM_TYPE_64 if is64 else 0) | (PCI_BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0)
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        struct.pack_into("<I", self.data, offset, flags)
        self._set_wmask(offset, 4, ~(size - 1) & 0xFFFFFFF0)
        if is64:
            self._set_wmask(offset + 4, 4, 0xFFFFFFFF if size <= 1 << 32 else ~((size - 1) >> 32) & 0xFFFFFFFF)
        return bar

    def add_capability(self, cap_id: int, body: bytes, writable: bytes = b"") -> int:
        """Append a capability {cap_id, next, body}; returns its offset. `writable` masks body bytes."""
        length = 2 + len(body)
        offset = self._next_cap
        if offset + length > CONFIG_SPACE_SIZE:
            raise ValueError("capabilities do not fit in the 256-byte configuration space")
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        self.data[offset + 2:offset + length] = body
        self.wmask[offset + 2:offset + 2 + len(writable)] = writable
        if self._last_cap is None:
            self.data[PCI_CAPABILITY_LIST] = offset
            struct.pack_into("<H", self.data, PCI_STATUS, self.status | PCI_STATUS_CAP_LIST)
        else:
            self.data[self._last_cap + 1] = offset
        self._last_cap = offset
        self._next_cap = (offset + length + 3) & ~3
        return offset

    def set_bar_address(self, index: int, address: int) -> None:
        """Firmware-style assignment of a BAR's address before the guest runs."""
        bar = self.bars[index]
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        low = struct.unpack_from("<I", self.data, offset)[0] & 0xF
        struct.pack_into("<I", self.data, offset, (address & 0xFFFFFFF0) | low)
        if bar.is64:
            struct.pack_into("<I", self.data, offset + 4, address >> 32)
        self._update_mappings()

    # --- registers ---------------------------------------------------------------------
    @property
    def command(self) -> int:
        return struct.unpack_from("<H", self.data, PCI_COMMAND)[0]

    @property
    def status(self) -> int:
        return struct.unpack_from("<H", self.data, PCI_STATUS)[0]

    def set_interrupt_status(self, asserted: bool) -> None:
        """STATUS.INTERRUPT mirrors the INTx level (PCI 3.0 6.2.3)."""
        status = self.status & ~PCI_STATUS_INTERRUPT | (PCI_STATUS_INTERRUPT if asserted else 0)
        struct.pack_into("<H", self.data, PCI_STATUS, status)

    def u8(self, offset: int) -> int:
        return self.data[offset]

    def u16(self, offset: int) -> int:
        return struct.unpack_from("<H", self.data, offset)[0]

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.data, offset)[0]

    def bar_address(self, index: int) -> int:
        """Guest-assigned address of BAR `index` (both halves for a 64-bit BAR)."""
        bar = self.bars[index]
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        address = self.u32(offset) & 0xFFFFFFF0
        if bar.is64:
            address |= self.u32(offset + 4) << 32
        return address

    def read(self, offset: int, size: int) -> int:
        """Read `size` bytes at `offset`; bytes past the end read as all ones."""
        if offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """Write through the writable mask; re-decode BARs when COMMAND or a BAR changed."""
        if offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return
        data, wmask = self.data, self.wmask
        touches_decode = False
        for i in range(size):
            pos = offset + i
            byte = value >> (8 * i) & 0xFF
            mask = wmask[pos]
            if mask:
                data[pos] = (data[pos] & ~mask) | (byte & mask)
            if pos in (PCI_COMMAND, PCI_COMMAND + 1) or PCI_BASE_ADDRESS_0 <= pos < PCI_BASE_ADDRESS_0 + 24:
                touches_decode = True
        if touches_decode:
            self._update_mappings()

    # --- BAR decoding --------------------------------------------------------------------
    def _decoded_address(self, bar: Bar) -> Optional[int]:
        """Where `bar` should be mapped now, or None (memory decoding off, unassigned, sizing)."""
        if not self.command & PCI_COMMAND_MEMORY:
            return None
        address = self.bar_address(bar.index)
        if address == 0 or address + bar.size > 1 << 64 or (not bar.is64 and address + bar.size > 1 << 32):
            return None
        return address

    def _update_mappings(self) -> None:
        if self.mapper is None:
            return
        for bar in self.bars.values():
            want = self._decoded_address(bar)
            if want == bar.mapped_at:
                continue
            if bar.mapped_at is not None:
                self.mapper.unmap(bar.mapped_at)
                bar.mapped_at = None
            # A guest may place a BAR over another device; like overlapping decoders on real
            # hardware the result is undefined, here the BAR is simply not decoded.
            if want is not None and self.mapper.map(want, bar.size, bar.handler):
                bar.mapped_at = want

    def unmap_all(self) -> None:
        """Stop decoding every BAR (device removal, VM teardown)."""
        for bar in self.bars.values():
            if bar.mapped_at is not None and self.mapper is not None:
                self.mapper.unmap(bar.mapped_at)
            bar.mapped_at = None
