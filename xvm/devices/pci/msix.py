"""MSI-X (PCI Local Bus 3.0 section 6.8.2): the capability, the vector table and the PBA.

The capability (12 bytes) holds Message Control (table size - 1, Function
Mask bit 14, MSI-X Enable bit 15) and the BAR/offset of the table and of the
Pending Bit Array. Each table entry is 16 bytes: message address low/high,
message data, vector control (bit 0 = masked; every vector starts masked,
6.8.2.9). A vector that fires while masked (per vector or function-wide)
sets its pending bit instead; when it is unmasked the message goes out and
the bit clears (6.8.2.9 "...the function must send the message"). The PBA is
read-only to software.

Messages are delivered through an MsiSink: KVM_SIGNAL_MSI on the kvm
engine, the emulated APIC bus on bt.

    msix = Msix(vectors=3, sink=vm.msi_sink())
    config.add_capability(PCI_CAP_ID_MSIX, msix.capability_body(bar=0, table_offset=0, pba_offset=0x800),
                          msix.capability_writable())
    ... on config writes: msix.write_message_control(config.u16(cap + 2))
    msix.notify(vector)
"""

from __future__ import annotations

import struct
import threading

from xvm.bus.irq import MsiMessage, MsiSink

PCI_MSIX_FLAGS_QSIZE = 0x07FF
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_CTRL_MASKBIT = 1
#: Offset of the vector control dword inside a table entry.
PCI_MSIX_ENTRY_VECTOR_CTRL = 12
#: Largest table (Message Control's 11-bit size field).
MSIX_MAX_VECTORS = 2048


class Msix:
    """The MSI-X table, PBA and enable/mask state of one function.

    Thread-safe: `notify` may come from an I/O thread while a vCPU writes the table.
    """

    def __init__(self, vectors: int, sink: MsiSink) -> None:
        if not 1 <= vectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"MSI-X table of {vectors} vectors (1-{MSIX_MAX_VECTORS})")
        self.vectors = vectors
        self.sink = sink
        self.table = bytearray(PCI_MSIX_ENTRY_SIZE * vectors)
        for vector in range(vectors):
            self.table[PCI_MSIX_ENTRY_SIZE * vector + PCI_MSIX_ENTRY_VECTOR_CTRL] = PCI_MSIX_ENTRY_CTRL_MASKBIT
        self.pending = 0
        self.enabled = False
        self.function_masked = False
        self.sent = 0
        self._lock = threading.Lock()

    # --- capability ------------------------------------------------------------------
    @property
    def table_size(self) -> int:
        return PCI_MSIX_ENTRY_SIZE * self.vectors

    @property
    def pba_size(self) -> int:
        return (self.vectors + 63) // 64 * 8

    def capability_body(self, bar: int, table_offset: int, pba_offset: int) -> bytes:
        """Message Control, Table Offset/BIR, PBA Offset/BIR (after cap id and next)."""
        if table_offset % 8 or pba_offset % 8:
            raise ValueError("MSI-X table and PBA offsets must be 8-byte aligned")
        return struct.pack("<HII", self.vectors - 1, table_offset | bar, pba_offset | bar)

    @staticmethod
    def capability_writable() -> bytes:
        """Only Function Mask and MSI-X Enable are writable (the high byte of Message Control)."""
        return bytes((0x00, (PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL) >> 8))

    def write_message_control(self, control: int) -> None:
        """The guest wrote Message Control: apply Enable and Function Mask, flush what became deliverable."""
        with self._lock:
            self.enabled = bool(control & PCI_MSIX_FLAGS_ENABLE)
            self.function_masked = bool(control & PCI_MSIX_FLAGS_MASKALL)
            self._flush()

    # --- table and PBA -----------------------------------------------------------------
    def table_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(self.table):
            return 0
        return int.from_bytes(self.table[offset:offset + size], "little")

    def table_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > len(self.table):
            return
        with self._lock:
            self.table[offset:offset + size] = value.to_bytes(size, "little")
            self._flush()

    def pba_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > self.pba_size:
            return 0
        return self.pending >> (8 * offset) & ((1 << (8 * size)) - 1)

    def masked(self, vector: int) -> bool:
        return self.function_masked or bool(
            self.table[PCI_MSIX_ENTRY_SIZE * vector + PCI_MSIX_ENTRY_VECTOR_CTRL] & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def message(self, vector: int) -> MsiMessage:
        address_lo, address_hi, data = struct.unpack_from("<III", self.table, PCI_MSIX_ENTRY_SIZE * vector)
        return MsiMessage(address_hi << 32 | address_lo, data)

    # --- delivery ------------------------------------------------------------------------
    def notify(self, vector: int) -> bool:
        """Fire `vector`: send it, or mark it pending while masked. False when MSI-X is off or the vector bad."""
        if not 0 <= vector < self.vectors:
            return False
        with self._lock:
            if not self.enabled:
                return False
            if self.masked(vector):
                self.pending |= 1 << vector
            else:
                self._send(vector)
        return True

    def _flush(self) -> None:
        """Send the pending vectors that are now unmasked (called with the lock held)."""
        if not self.enabled or not self.pending or self.function_masked:
            return
        for vector in range(self.vectors):
            if self.pending >> vector & 1 and not self.masked(vector):
                self.pending &= ~(1 << vector)
                self._send(vector)

    def _send(self, vector: int) -> None:
        self.sent += 1
        self.sink.signal_msi(self.message(vector))
