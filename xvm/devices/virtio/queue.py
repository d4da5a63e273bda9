"""The virtio 1.x split virtqueue (virtio spec 1.2 section 2.7), device side.

Three areas of guest RAM make one queue, all placed by the driver:

- the descriptor table: `size` entries of {addr u64, len u32, flags u16, next u16};
- the available ring (driver -> device): flags u16, idx u16, ring[size] u16, used_event u16;
- the used ring (device -> driver): flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16.

The driver posts the head of a descriptor chain in the available ring and
bumps avail.idx; the device pops it, reads the readable buffers, fills the
writable ones and pushes {head, bytes written} to the used ring. Indices are
free-running 16-bit counters; ring slots are `idx % size`.

Everything here is guest-controlled, so every value is checked before use and
any violation raises VirtqueueError (the device then marks itself
NEEDS_RESET): queue size a power of two no larger than the device's maximum,
ring addresses aligned (2.7: 16/2/4) and inside RAM, descriptor indices below
the table size, at most `size` descriptors per chain (this also catches loops:
2.7.5.3.1 "a driver MUST NOT create a descriptor chain longer than the Queue
Size"), a total length below 2^32, buffers inside RAM, readable buffers before
writable ones, no nested indirect tables, and avail.idx never more than `size`
entries ahead of what the device has consumed. Guest RAM is only touched
through GuestMemory, which cannot reach host memory outside it.

    queue = Virtqueue(memory, max_size=256)
    ... transport sets size/desc_addr/avail_addr/used_addr, then ready ...
    queue.validate()                  # at DRIVER_OK
    while (chain := queue.pop()) is not None:
        request = chain.read_all()
        written = chain.write(reply)
        queue.push(chain.head, written)
    if queue.needs_interrupt(): ...   # VirtioDevice.signal_used does this

Models: rust-vmm virtio-queue src/queue.rs and descriptor_chain.rs, Firecracker
devices/virtio/queue.rs, Linux drivers/virtio/virtio_ring.c (the driver side).
"""

from __future__ import annotations

import struct
from typing import Callable, Optional

from xvm.errors import GuestMemoryError
from xvm.memory.guest_memory import GuestMemory

# Descriptor flags (2.7.5).
VIRTQ_DESC_F_NEXT = 1  # the buffer continues in the `next` field
VIRTQ_DESC_F_WRITE = 2  # device-writable (otherwise device-readable)
VIRTQ_DESC_F_INDIRECT = 4  # the buffer holds a table of descriptors (2.7.5.3)

VIRTQ_AVAIL_F_NO_INTERRUPT = 1  # driver: do not interrupt me (ignored under EVENT_IDX)
VIRTQ_USED_F_NO_NOTIFY = 1  # device: do not kick me (ignored under EVENT_IDX)

# Reserved feature bits (6) the queue implements.
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29

#: Largest queue size the spec allows (2.7: "Queue Size ... maximum is 32768").
VIRTQ_MAX_SIZE = 32768
#: Total length of one chain must fit the used ring's u32 `len`.
MAX_CHAIN_BYTES = (1 << 32) - 1

DESC_SIZE = 16
_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


class VirtqueueError(Exception):
    """The driver broke the virtqueue rules; the device must stop using the queue.

    Not an XvmError: it never reaches the user, the device turns it into
    DEVICE_NEEDS_RESET (or a failed request) and logs it once.
    """


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


class DescriptorChain:
    """One validated chain popped from the available ring.

    `readable` and `writable` are lists of (gpa, length), each buffer known
    to lie inside guest RAM, readable ones first (2.7.4.2).
    """

    __slots__ = ("memory", "head", "readable", "writable", "readable_len", "writable_len", "_on_write")

    def __init__(self, memory: GuestMemory, head: int, readable: list, writable: list,
                 on_write: Optional[Callable[[int, int], None]] = None) -> None:
        self.memory = memory
        self.head = head
        self.readable = readable
        self.writable = writable
        self.readable_len = sum(length for _, length in readable)
        self.writable_len = sum(length for _, length in writable)
        self._on_write = on_write

    def read_all(self) -> bytes:
        """The concatenated driver->device bytes."""
        read = self.memory.read
        if len(self.readable) == 1:
            gpa, length = self.readable[0]
            return read(gpa, length)
        return b"".join(read(gpa, length) for gpa, length in self.readable)

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` readable bytes starting `offset` bytes into the chain."""
        out = []
        for gpa, size in self.readable:
            if length <= 0:
                break
            if offset >= size:
                offset -= size
                continue
            count = min(size - offset, length)
            out.append(self.memory.read(gpa + offset, count))
            length -= count
            offset = 0
        return b"".join(out)

    def write(self, data: bytes, offset: int = 0) -> int:
        """Copy `data` into the writable buffers from byte `offset` on; returns bytes written.

        Whatever does not fit is dropped (the device reports the count it wrote).
        """
        done = 0
        total = len(data)
        for gpa, size in self.writable:
            if done >= total:
                break
            if offset >= size:
                offset -= size
                continue
            count = min(size - offset, total - done)
            # bytes(): PyPy's mmap takes only bytes; a no-op for a bytes slice on CPython.
            self.memory.write(gpa + offset, bytes(data[done:done + count]))
            if self._on_write is not None:
                self._on_write(gpa + offset, count)
            done += count
            offset = 0
        return done


class Virtqueue:
    """Device side of one split virtqueue; the transport fills in the driver's settings.

    Fields the transport writes while the queue is not ready: `size`,
    `desc_addr`, `avail_addr`, `used_addr`; then `ready`. The device calls
    `validate()` at DRIVER_OK (VirtioDevice does), then pop/push.
    """

    def __init__(self, memory: GuestMemory, max_size: int) -> None:
        if not is_power_of_two(max_size) or max_size > VIRTQ_MAX_SIZE:
            raise ValueError(f"virtqueue maximum size {max_size} is not a power of two up to {VIRTQ_MAX_SIZE}")
        self.memory = memory
        self.max_size = max_size
        #: Negotiated features the queue honours (set by the device at activation).
        self.event_idx = False
        self.indirect = False
        #: Called with (gpa, length) after every buffer write (bt engine code coherence).
        self.on_write: Optional[Callable[[int, int], None]] = None
        self.reset()

    def reset(self) -> None:
        """Back to the power-on state (2.7: size reads as the maximum, not ready)."""
        self.size = self.max_size
        self.ready = False
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.last_avail_idx = 0
        self.next_used_idx = 0
        #: used.idx when the driver was last interrupted (None: never, so the first push interrupts).
        self.signalled_used: Optional[int] = None
        self._valid = False

    # --- setup --------------------------------------------------------------------
    def validate(self) -> None:
        """Check the driver's settings before first use; VirtqueueError when they are unusable."""
        self._valid = False
        size = self.size
        if not is_power_of_two(size) or size > self.max_size:
            raise VirtqueueError(f"queue size {size} is not a power of two up to {self.max_size}")
        areas = (
            ("descriptor table", self.desc_addr, DESC_SIZE * size, 16),
            ("available ring", self.avail_addr, 6 + 2 * size, 2),
            ("used ring", self.used_addr, 6 + 8 * size, 4),
        )
        for name, address, length, align in areas:
            if address % align:
                raise VirtqueueError(f"{name} at {address:#x} is not {align}-byte aligned")
            if not self.memory.contains(address, length):
                raise VirtqueueError(f"{name} at {address:#x}+{length:#x} is not in guest RAM")
        # Both counters start at 0 when the driver enables a queue (2.7.6, 2.7.8).
        self.last_avail_idx = 0
        self.next_used_idx = 0
        self.signalled_used = None
        self._valid = True

    @property
    def usable(self) -> bool:
        """Ready and validated: pop() may be called."""
        return self.ready and self._valid

    # --- the available ring -----------------------------------------------------------
    def avail_idx(self) -> int:
        return self.memory.read_u16(self.avail_addr + 2)

    def has_pending(self) -> bool:
        """True when the driver has posted chains the device has not popped."""
        return self.usable and self.avail_idx() != self.last_avail_idx

    def pop(self) -> Optional[DescriptorChain]:
        """The next available chain, or None; VirtqueueError on malformed input.

        Under EVENT_IDX the device also publishes avail_event = the index it
        wants to be kicked for next, i.e. it asks for a kick for every new chain
        while it is not draining the ring (2.7.10).
        """
        if not self.usable:
            return None
        try:
            memory = self.memory
            size = self.size
            pending = (memory.read_u16(self.avail_addr + 2) - self.last_avail_idx) & 0xFFFF
            if pending == 0:
                return None
            if pending > size:
                raise VirtqueueError(f"avail.idx is {pending} entries ahead of the device, more than the size {size}")
            head = memory.read_u16(self.avail_addr + 4 + 2 * (self.last_avail_idx % size))
            self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
            if self.event_idx:
                memory.write_u16(self.used_addr + 4 + 8 * size, self.last_avail_idx)
            return self._walk(head)
        except GuestMemoryError as error:  # validated areas cannot fail, but never let one escape
            raise VirtqueueError(f"guest memory access failed: {error}") from error

    def _walk(self, head: int) -> DescriptorChain:
        """Follow the chain starting at descriptor `head` (2.7.5, 2.7.5.3 indirect)."""
        memory = self.memory
        size = self.size
        table, table_len = self.desc_addr, size
        #: The indirect table once the chain enters it, read in one piece (a large request has ~256 entries).
        entries: Optional[bytes] = None
        index = head
        budget = size  # descriptors left, direct and indirect together
        indirect = False
        readable: list = []
        writable: list = []
        total = 0
        while True:
            if index >= table_len:
                raise VirtqueueError(f"descriptor index {index} is outside the table of {table_len}")
            if budget == 0:
                raise VirtqueueError(f"descriptor chain from head {head} is longer than the queue size {size} "
                                     "(a loop?)")
            budget -= 1
            if entries is None:
                addr, length, flags, next_index = _DESC.unpack(memory.read(table + DESC_SIZE * index, DESC_SIZE))
            else:
                addr, length, flags, next_index = _DESC.unpack_from(entries, DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise VirtqueueError("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                if indirect:
                    raise VirtqueueError("nested indirect descriptor table")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise VirtqueueError("indirect descriptor with NEXT set")
                if length == 0 or length % DESC_SIZE:
                    raise VirtqueueError(f"indirect table length {length} is not a multiple of {DESC_SIZE}")
                if length // DESC_SIZE > size:
                    raise VirtqueueError(f"indirect table of {length // DESC_SIZE} descriptors exceeds the queue "
                                         f"size {size}")
                if not memory.contains(addr, length):
                    raise VirtqueueError(f"indirect table at {addr:#x}+{length:#x} is not in guest RAM")
                table, table_len = addr, length // DESC_SIZE
                entries = memory.read(addr, length)
                index = 0
                indirect = True
                budget = table_len
                continue
            total += length
            if total > MAX_CHAIN_BYTES:
                raise VirtqueueError(f"descriptor chain from head {head} is longer than 4 GiB")
            if not memory.contains(addr, length):
                raise VirtqueueError(f"buffer at {addr:#x}+{length:#x} is not in guest RAM")
            if flags & VIRTQ_DESC_F_WRITE:
                segments = writable
            elif writable:
                raise VirtqueueError("device-readable descriptor after a device-writable one")
            else:
                segments = readable
            last = segments[-1] if segments else None
            if last is not None and last[0] + last[1] == addr and memory.contains(last[0], last[1] + length):
                # Physically adjacent buffers (consecutive pages of one guest buffer) become one
                # segment, in one RAM region: fewer views and iovecs per request.
                segments[-1] = (last[0], last[1] + length)
            else:
                segments.append((addr, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                return DescriptorChain(memory, head, readable, writable, self.on_write)
            index = next_index

    # --- the used ring ----------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Return chain `head` to the driver with `written` bytes filled in.

        The element is stored before used.idx moves (2.7.8.2); on x86 stores are
        not reordered, and the GIL orders the Python side.
        """
        if not self.usable:
            return
        size = self.size
        slot = self.used_addr + 4 + 8 * (self.next_used_idx % size)
        self.memory.write(slot, _USED_ELEM.pack(head, written & 0xFFFFFFFF))
        self.next_used_idx = (self.next_used_idx + 1) & 0xFFFF
        self.memory.write_u16(self.used_addr + 2, self.next_used_idx)

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one.

        Without EVENT_IDX: unless avail.flags has NO_INTERRUPT. With it: when
        used.idx passed the driver's used_event since the last interrupt
        (vring_need_event, 2.7.10).
        """
        if not self.usable:
            return False
        new = self.next_used_idx
        if not self.event_idx:
            return not self.memory.read_u16(self.avail_addr) & VIRTQ_AVAIL_F_NO_INTERRUPT
        old = self.signalled_used
        self.signalled_used = new
        if old is None:
            return True
        used_event = self.memory.read_u16(self.avail_addr + 4 + 2 * self.size)
        return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF

    # --- notification suppression ---------------------------------------------------
    def disable_notifications(self) -> None:
        """Ask the driver not to kick (while the device drains the ring anyway)."""
        if not self.usable or self.event_idx:
            return  # under EVENT_IDX avail_event only moves forward in pop()
        self.memory.write_u16(self.used_addr, VIRTQ_USED_F_NO_NOTIFY)

    def enable_notifications(self) -> bool:
        """Ask for kicks again; True when chains arrived meanwhile (the caller must pop again)."""
        if not self.usable:
            return False
        if self.event_idx:
            self.memory.write_u16(self.used_addr + 4 + 8 * self.size, self.last_avail_idx)
        else:
            self.memory.write_u16(self.used_addr, 0)
        return self.avail_idx() != self.last_avail_idx
