"""Fuzz the virtio-blk and virtio-net request paths with random descriptor tables and rings.

Whatever the guest leaves in RAM, a kick must end with the device either
serving (requests completed or failed) or NEEDS_RESET, never an exception
in the VMM, and nothing is written outside guest RAM (GuestMemory cannot).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unit.devices.virtio.conftest import AVAIL_BASE, DATA_BASE, DESC_BASE, MEM_SIZE, FakeDriver

from xvm.config import DiskConfig, NetConfig
from xvm.devices.virtio.block import BlockDevice
from xvm.devices.virtio.device import VIRTIO_F_VERSION_1
from xvm.devices.virtio.net import NET_HDR_LEN, NetDevice
from xvm.devices.virtio.queue import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from xvm.memory.guest_memory import GuestMemory

QUEUE = 16
FEATURES = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_INDIRECT_DESC | 1 << VIRTIO_F_EVENT_IDX

addresses = st.one_of(
    st.integers(DATA_BASE, DATA_BASE + 0x4000),
    st.integers(MEM_SIZE - 0x100, MEM_SIZE + 0x100),
    st.integers(0, 2**64 - 1),
)
lengths = st.one_of(st.integers(0, 1100), st.sampled_from([16, 17, 512, 513, 2**32 - 1]))
descriptors = st.lists(
    st.tuples(addresses, lengths, st.integers(0, 7), st.integers(0, QUEUE + 2)), min_size=1, max_size=QUEUE
)
rings = st.tuples(st.lists(st.integers(0, QUEUE + 2), max_size=QUEUE + 2), st.integers(0, 0xFFFF))
data = st.binary(min_size=0, max_size=64)


class NullBackend:
    vnet_hdr = True

    def send(self, parts) -> None:
        assert sum(len(p) for p in parts) >= NET_HDR_LEN

    def recv(self):
        return None

    def set_offloads(self, csum, tso4, tso6) -> None:
        pass

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass


def activate(device, memory, queue_count: int) -> list:
    drivers = [FakeDriver(memory, device.queues[i], size=QUEUE, base=0x4000 * i) for i in range(queue_count)]
    device.write_status(1 | 2)
    device.write_driver_features(0, FEATURES & 0xFFFFFFFF)
    device.write_driver_features(1, FEATURES >> 32)
    device.write_status(1 | 2 | 8)
    for queue in device.queues:
        queue.ready = True
    device.write_status(1 | 2 | 8 | 4)
    assert device.serving
    return drivers


def scribble(memory, base: int, table, ring, payload: bytes) -> None:
    """Lay the random descriptors, available ring and some request bytes into guest RAM."""
    for index, (addr, length, flags, nxt) in enumerate(table):
        memory.write(DESC_BASE + base + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))
    heads, idx = ring
    for slot, head in enumerate(heads[:QUEUE]):
        memory.write_u16(AVAIL_BASE + base + 4 + 2 * slot, head)
    memory.write_u16(AVAIL_BASE + base + 2, idx if heads else len(heads))
    memory.write(DATA_BASE + base * 4, payload)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("blkfuzz") / "disk.img"
    path.write_bytes(bytes(64 * 512))
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=descriptors, ring=rings, payload=data,
       header=st.tuples(st.sampled_from([0, 1, 4, 8, 11, 99]), st.integers(0, 2**64 - 1)))
def test_block_requests_never_crash_the_vmm(image, table, ring, payload, header):
    memory = GuestMemory.allocate(MEM_SIZE)
    device = BlockDevice(memory, DiskConfig(image))
    try:
        activate(device, memory, 1)
        scribble(memory, 0, table, ring, struct.pack("<IIQ", header[0], 0, header[1]) + payload)
        device.queue_notify(0)
        device.queue_notify(0)
        assert device.serving or device.needs_reset
        assert image.stat().st_size == 64 * 512
    finally:
        device.close()
        memory.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=descriptors, tx_ring=rings, rx=descriptors, rx_ring=rings, payload=data, frame=st.binary(max_size=200))
def test_net_queues_never_crash_the_vmm(tx, tx_ring, rx, rx_ring, payload, frame):
    memory = GuestMemory.allocate(MEM_SIZE)
    device = NetDevice(memory, NetConfig("tap"), backend=NullBackend())
    try:
        activate(device, memory, 2)
        scribble(memory, 0, rx, rx_ring, payload)
        scribble(memory, 0x4000, tx, tx_ring, payload)
        device.queue_notify(1)
        device.receive((bytes(NET_HDR_LEN), frame), wait=0)
        assert device.serving or device.needs_reset
    finally:
        device.close()
        memory.close()
