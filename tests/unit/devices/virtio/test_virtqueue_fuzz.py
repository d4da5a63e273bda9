"""Fuzz: random ring contents and queue settings never get past the virtqueue checks.

Whatever the guest leaves in its rings, pop() returns a chain whose buffers
all lie in RAM, readable before writable, no longer than the queue, or raises
VirtqueueError; push()/needs_interrupt() never fail on a validated queue.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xvm.devices.virtio.queue import Virtqueue, VirtqueueError
from xvm.memory.guest_memory import GuestMemory

RAM = 1 << 20
MEMORY = GuestMemory.allocate(RAM)

# Addresses biased to be interesting: in RAM, at its edge, just outside, far away.
addresses = st.one_of(
    st.integers(0, RAM - 1), st.integers(RAM - 64, RAM + 64), st.integers(0, (1 << 64) - 1),
    st.sampled_from([0, 0x1000, RAM - 16, 0xFFFF_FFFF_FFFF_FFF0]),
)
descriptor = st.tuples(
    addresses,
    st.one_of(st.integers(0, 64), st.integers(0, 0xFFFF_FFFF), st.sampled_from([16, 32, 48, 0x8000_0000])),
    st.integers(0, 7),  # NEXT | WRITE | INDIRECT in any combination
    st.one_of(st.integers(0, 20), st.integers(0, 0xFFFF)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from([1, 2, 4, 8, 16, 3, 0, 32]),
    descs=st.lists(descriptor, min_size=1, max_size=20),
    avail=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20),
    avail_idx=st.integers(0, 0xFFFF),
    event_idx=st.booleans(),
    indirect=st.booleans(),
    pops=st.integers(1, 6),
)
def test_pop_returns_valid_chain_or_raises(size, descs, avail, avail_idx, event_idx, indirect, pops):
    desc_addr, avail_addr, used_addr, table_addr = 0x1000, 0x3000, 0x4000, 0x6000
    MEMORY.fill(0, 0x8000)
    for i, (addr, length, flags, nxt) in enumerate(descs):
        packed = struct.pack("<QIHH", addr, length, flags, nxt)
        MEMORY.write(desc_addr + 16 * i, packed)
        MEMORY.write(table_addr + 16 * i, packed)  # also a plausible indirect table
    for i, head in enumerate(avail):
        MEMORY.write_u16(avail_addr + 4 + 2 * i, head)
    MEMORY.write_u16(avail_addr + 2, avail_idx)
    queue = Virtqueue(MEMORY, 16)
    queue.size, queue.desc_addr, queue.avail_addr, queue.used_addr = size, desc_addr, avail_addr, used_addr
    queue.event_idx, queue.indirect, queue.ready = event_idx, indirect, True
    try:
        queue.validate()
    except VirtqueueError:
        assert size not in (1, 2, 4, 8, 16)
        return
    for _ in range(pops):
        try:
            chain = queue.pop()
        except VirtqueueError:
            return
        if chain is None:
            return
        buffers = chain.readable + chain.writable
        assert 1 <= len(buffers) <= size
        assert chain.readable_len + chain.writable_len < 1 << 32
        for gpa, length in buffers:
            assert MEMORY.contains(gpa, length)
        chain.read_all()
        chain.write(b"\0" * min(chain.writable_len, 256))
        queue.push(chain.head, chain.writable_len)
        queue.needs_interrupt()
