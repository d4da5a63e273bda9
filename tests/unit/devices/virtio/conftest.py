"""A fake virtio driver for device tests (model: rust-vmm virtio-queue src/mock.rs).

FakeDriver lays out one split virtqueue in a GuestMemory the way Linux's
virtio_ring.c does, posts chains and reads back used entries, so device code
is tested against exactly the bytes a guest would leave in RAM.

    driver = FakeDriver(memory, queue)            # queue: a Virtqueue (or the device's)
    head = driver.post([b"request"], [64])        # one readable, one 64-byte writable buffer
    chain = queue.pop(); ...; queue.push(chain.head, n)
    assert driver.used() == [(head, n)]
"""

from __future__ import annotations

import struct

import pytest

from xvm.devices.virtio.queue import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Virtqueue,
)
from xvm.memory.guest_memory import GuestMemory

MEM_SIZE = 4 << 20
DESC_BASE = 0x10000
AVAIL_BASE = 0x20000
USED_BASE = 0x30000
#: Data buffers are carved from here upwards.
DATA_BASE = 0x100000


class FakeDriver:
    """Driver side of one split virtqueue in `memory` (Linux virtio_ring.c behaviour)."""

    def __init__(self, memory: GuestMemory, queue: Virtqueue, size: int = 16, base: int = 0) -> None:
        self.memory = memory
        self.queue = queue
        self.size = size
        self.desc, self.avail, self.used_ring = DESC_BASE + base, AVAIL_BASE + base, USED_BASE + base
        self.next_data = DATA_BASE + base * 4
        self.next_desc = 0
        self.avail_idx = 0
        self.last_used = 0
        self.buffers: dict = {}
        memory.fill(self.desc, 16 * size)
        memory.fill(self.avail, 6 + 2 * size)
        memory.fill(self.used_ring, 6 + 8 * size)
        queue.size = size
        queue.desc_addr, queue.avail_addr, queue.used_addr = self.desc, self.avail, self.used_ring

    def enable(self, event_idx: bool = False, indirect: bool = True) -> None:
        """queue_enable + DRIVER_OK for a bare queue (a device does this in write_status)."""
        self.queue.event_idx = event_idx
        self.queue.indirect = indirect
        self.queue.ready = True
        self.queue.validate()

    def alloc(self, length: int) -> int:
        gpa = self.next_data
        self.next_data += (length + 15) & ~15
        return gpa

    def write_desc(self, table: int, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.memory.write(table + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))

    def _buffers(self, readable, writable) -> list:
        """[(gpa, length, flags)] for readable byte strings and writable lengths."""
        out = []
        for data in readable:
            gpa = self.alloc(len(data))
            self.memory.write(gpa, data)
            out.append((gpa, len(data), 0))
        for length in writable:
            gpa = self.alloc(length)
            self.memory.fill(gpa, length, 0xEE)
            out.append((gpa, length, VIRTQ_DESC_F_WRITE))
        return out

    def post(self, readable=(), writable=(), indirect: bool = False, kick: bool = True) -> int:
        """Add one chain (byte strings to read, lengths to fill); returns its head index."""
        bufs = self._buffers(readable, writable)
        self.buffers_of_last = bufs
        if indirect:
            table = self.alloc(16 * len(bufs))
            for i, (gpa, length, flags) in enumerate(bufs):
                more = VIRTQ_DESC_F_NEXT if i + 1 < len(bufs) else 0
                self.write_desc(table, i, gpa, length, flags | more, i + 1)
            head = self._take_desc()
            self.write_desc(self.desc, head, table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT, 0)
        else:
            indices = [self._take_desc() for _ in bufs]
            for i, (gpa, length, flags) in enumerate(bufs):
                more = VIRTQ_DESC_F_NEXT if i + 1 < len(bufs) else 0
                nxt = indices[i + 1] if more else 0
                self.write_desc(self.desc, indices[i], gpa, length, flags | more, nxt)
            head = indices[0]
        self.buffers[head] = bufs
        if kick:
            self.publish(head)
        return head

    def _take_desc(self) -> int:
        index = self.next_desc
        self.next_desc = (self.next_desc + 1) % self.size
        return index

    def publish(self, head: int) -> None:
        """Put `head` in the next avail slot and bump avail.idx."""
        self.memory.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail + 2, self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail + 2, self.avail_idx)

    def used(self) -> list:
        """New (id, len) entries of the used ring since the last call."""
        out = []
        used_idx = self.memory.read_u16(self.used_ring + 2)
        while self.last_used != used_idx:
            slot = self.used_ring + 4 + 8 * (self.last_used % self.size)
            out.append(struct.unpack("<II", self.memory.read(slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def written(self, head: int) -> bytes:
        """The bytes in the writable buffers of chain `head`, concatenated."""
        return b"".join(self.memory.read(gpa, length) for gpa, length, flags in self.buffers[head]
                        if flags & VIRTQ_DESC_F_WRITE)

    # event index fields
    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used_ring + 4 + 8 * self.size)

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write_u16(self.avail, flags)


@pytest.fixture
def memory():
    mem = GuestMemory.allocate(MEM_SIZE)
    yield mem
    mem.close()


@pytest.fixture
def queue(memory) -> Virtqueue:
    return Virtqueue(memory, 256)


@pytest.fixture
def driver(memory, queue) -> FakeDriver:
    drv = FakeDriver(memory, queue)
    drv.enable()
    return drv


@pytest.fixture
def make_driver():
    """The FakeDriver class, for tests that lay out queues themselves."""
    return FakeDriver
