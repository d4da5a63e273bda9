"""virtio-net against the fake driver and a fake backend: headers, TX, RX, waiting and dropping."""

from __future__ import annotations

import queue as queue_module
import threading
import time

import pytest
from unit.devices.virtio.conftest import FakeDriver

from xvm.config import NetConfig
from xvm.devices.virtio.device import VIRTIO_F_VERSION_1
from xvm.devices.virtio.net import (
    NET_HDR_LEN,
    OFFLOAD_FEATURES,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS,
    NetDevice,
    parse_mac,
    random_mac,
)
from xvm.errors import ConfigError

FRAME = bytes.fromhex("ffffffffffff 020000000001 88b5") + b"payload" * 10


class FakeBackend:
    """Records sent frames; recv() hands out frames fed with feed()."""

    def __init__(self, vnet_hdr: bool) -> None:
        self.vnet_hdr = vnet_hdr
        self.sent: list = []
        self.inbox: queue_module.Queue = queue_module.Queue()
        self.offloads = None
        self.closed = False

    def send(self, parts) -> None:
        self.sent.append(b"".join(bytes(p) for p in parts))

    def recv(self):
        return self.inbox.get()

    def feed(self, frame: bytes) -> None:
        self.inbox.put(frame)

    def set_offloads(self, csum: bool, tso4: bool, tso6: bool) -> None:
        self.offloads = (csum, tso4, tso6)

    def interrupt(self) -> None:
        self.inbox.put(None)

    def close(self) -> None:
        self.closed = True


def make(memory, vnet_hdr: bool = True, mac: str = "02:00:00:aa:bb:cc", features: int = 0):
    backend = FakeBackend(vnet_hdr)
    device = NetDevice(memory, NetConfig("tap", mac=mac), backend=backend)
    rx = FakeDriver(memory, device.queues[0], base=0)
    tx = FakeDriver(memory, device.queues[1], base=0x4000)
    wanted = (1 << VIRTIO_F_VERSION_1) | features
    device.write_status(1 | 2)
    device.write_driver_features(0, wanted & 0xFFFFFFFF)
    device.write_driver_features(1, wanted >> 32)
    device.write_status(1 | 2 | 8)
    device.queues[0].ready = device.queues[1].ready = True
    device.write_status(1 | 2 | 8 | 4)
    assert device.serving
    return device, backend, rx, tx


@pytest.fixture
def nic(memory):
    device, backend, rx, tx = make(memory)
    yield device, backend, rx, tx
    device.close()


def wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_config_space_has_mac_and_link_up(nic):
    device = nic[0]
    assert bytes(device.config_read(i, 1) for i in range(6)) == bytes.fromhex("020000aabbcc")
    assert device.config_read(6, 2) == 1
    assert device.avail_features & (1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS)


def test_offloads_are_offered_only_with_a_vnet_header_backend(memory):
    plain = NetDevice(memory, NetConfig("user"), backend=FakeBackend(vnet_hdr=False))
    tap = NetDevice(memory, NetConfig("tap"), backend=FakeBackend(vnet_hdr=True))
    assert not plain.avail_features & OFFLOAD_FEATURES
    assert tap.avail_features & OFFLOAD_FEATURES == OFFLOAD_FEATURES


def test_activation_sets_backend_offloads_from_the_driver_features(memory):
    device, backend, _, _ = make(memory, features=1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4)
    try:
        assert backend.offloads == (True, True, False)
    finally:
        device.close()


def test_transmit_passes_header_and_frame_to_a_vnet_backend(nic):
    device, backend, _, tx = nic
    header = bytes([1, 0]) + bytes(10)
    head = tx.post([header, FRAME[:20], FRAME[20:]], [])
    device.queue_notify(1)
    assert backend.sent == [header + FRAME]
    assert tx.used() == [(head, 0)]
    assert device.interrupt.queue_signals == 1


def test_transmit_strips_the_header_for_a_plain_backend(memory):
    device, backend, _, tx = make(memory, vnet_hdr=False)
    try:
        tx.post([bytes(NET_HDR_LEN) + FRAME], [])
        tx.post([bytes(NET_HDR_LEN - 2)], [])  # too short: dropped but returned
        device.queue_notify(1)
        assert backend.sent == [FRAME]
        assert len(tx.used()) == 2
        assert (device.tx_frames, device.tx_dropped) == (1, 1)
    finally:
        device.close()


def test_receive_writes_header_and_frame_into_posted_buffers(memory):
    device, backend, rx, _ = make(memory, vnet_hdr=False)
    try:
        head = rx.post([], [NET_HDR_LEN, 2048])
        backend.feed(FRAME)
        wait_for(lambda: device.rx_frames == 1)
        used = rx.used()
        assert used == [(head, NET_HDR_LEN + len(FRAME))]
        data = rx.written(head)
        assert data[:NET_HDR_LEN] == bytes(10) + b"\x01\x00"  # num_buffers = 1
        assert data[NET_HDR_LEN:NET_HDR_LEN + len(FRAME)] == FRAME
        assert device.interrupt.queue_signals >= 1
    finally:
        device.close()


def test_receive_from_a_vnet_backend_keeps_its_header_and_sets_num_buffers(nic):
    device, backend, rx, _ = nic
    head = rx.post([], [4096])
    backend.feed(bytes([1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0xEE, 0xEE]) + FRAME)
    wait_for(lambda: device.rx_frames == 1)
    assert rx.written(head)[:NET_HDR_LEN + len(FRAME)] == bytes([1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 1, 0]) + FRAME


def test_a_frame_waits_for_the_driver_to_post_a_buffer(nic):
    device, _, rx, _ = nic
    result = []
    worker = threading.Thread(target=lambda: result.append(device.receive((bytes(12), FRAME), wait=5)))
    worker.start()
    time.sleep(0.05)
    assert not result
    head = rx.post([], [4096])
    device.queue_notify(0)
    worker.join(5)
    assert result == [True]
    assert rx.used() == [(head, NET_HDR_LEN + len(FRAME))]


def test_frames_are_dropped_without_buffers_or_when_too_big(nic):
    device, _, rx, _ = nic
    assert device.receive((bytes(12), FRAME), wait=0) is False
    head = rx.post([], [32])
    assert device.receive((bytes(12), FRAME), wait=0) is False
    assert rx.used() == [(head, 0)]
    assert device.rx_dropped == 2


def test_reset_stops_delivery_and_close_stops_the_reader(nic):
    device, backend, rx, _ = nic
    rx.post([], [4096])
    device.write_status(0)
    assert device.receive((bytes(12), FRAME), wait=0) is False
    device.close()
    assert backend.closed
    assert device._rx_thread is not None and not device._rx_thread.is_alive()


def test_mac_parsing():
    assert parse_mac("52:54:00:12:34:5e") == bytes.fromhex("52540012345e")
    assert parse_mac("02-00-00-00-00-01") == bytes.fromhex("020000000001")
    for bad in ("52:54:00:12:34", "zz:54:00:12:34:56", "01:00:5e:00:00:01", "123:4:5:6:7:8"):
        with pytest.raises(ConfigError):
            parse_mac(bad)
    mac = random_mac()
    assert len(mac) == 6 and mac[0] & 3 == 2
