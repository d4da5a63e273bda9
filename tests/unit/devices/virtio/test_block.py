"""virtio-blk against the fake driver: requests as Linux's virtio_blk.c lays them out."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from unit.devices.virtio.conftest import FakeDriver

from xvm.config import DiskConfig
from xvm.devices.backends.block_file import RawFile
from xvm.devices.virtio.block import (
    SEG_MAX,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    BlockDevice,
    split_segments,
)
from xvm.devices.virtio.device import VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1
from xvm.devices.virtio.queue import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from xvm.errors import ConfigError

SECTORS = 64


def header(kind: int, sector: int = 0) -> bytes:
    return struct.pack("<IIQ", kind, 0, sector)


def start(device: BlockDevice, memory, features: int = 0) -> FakeDriver:
    """Negotiate VERSION_1 (+features), set up queue 0 and DRIVER_OK, as virtio_pci does."""
    driver = FakeDriver(memory, device.queues[0])
    wanted = (1 << VIRTIO_F_VERSION_1) | features
    device.write_status(1 | 2)
    device.write_driver_features(0, wanted & 0xFFFFFFFF)
    device.write_driver_features(1, wanted >> 32)
    device.write_status(1 | 2 | 8)
    device.queues[0].ready = True
    device.write_status(1 | 2 | 8 | 4)
    assert device.serving
    return driver


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (SECTORS * 2))
    return path


@pytest.fixture
def disk(memory, image):
    device = BlockDevice(memory, DiskConfig(image))
    yield device
    device.close()


def test_config_space_reports_capacity_seg_max_and_block_size(disk):
    assert disk.config_read(0, 8) == SECTORS
    assert disk.config_read(0, 4) == SECTORS
    assert disk.config_read(12, 4) == SEG_MAX
    assert disk.config_read(20, 4) == 512
    assert disk.config_read(0x100, 4) == 0
    assert disk.avail_features & VIRTIO_BLK_F_FLUSH
    assert not disk.avail_features & VIRTIO_BLK_F_RO


def test_read_fills_data_and_status(disk, memory, image):
    driver = start(disk, memory)
    head = driver.post([header(VIRTIO_BLK_T_IN, 2)], [1024, 1])
    disk.queue_notify(0)
    assert driver.used() == [(head, 1025)]
    assert driver.written(head) == image.read_bytes()[1024:2048] + bytes([VIRTIO_BLK_S_OK])
    assert disk.interrupt.queue_signals == 1


def test_write_then_flush_lands_in_the_file(disk, memory, image):
    driver = start(disk, memory, VIRTIO_BLK_F_FLUSH)
    data = b"\xab" * 512 + b"\xcd" * 512
    w = driver.post([header(VIRTIO_BLK_T_OUT, 5), data[:512], data[512:]], [1])
    f = driver.post([header(VIRTIO_BLK_T_FLUSH)], [1])
    disk.queue_notify(0)
    assert driver.used() == [(w, 1), (f, 1)]
    assert driver.written(w) == driver.written(f) == bytes([VIRTIO_BLK_S_OK])
    assert image.read_bytes()[5 * 512:7 * 512] == data


def test_header_data_and_status_may_share_descriptors(disk, memory, image):
    """VERSION_1 implies ANY_LAYOUT: header and data in one buffer, data and status in one."""
    driver = start(disk, memory)
    w = driver.post([header(VIRTIO_BLK_T_OUT, 1) + b"\x11" * 512], [1])
    r = driver.post([header(VIRTIO_BLK_T_IN, 1)[:7], header(VIRTIO_BLK_T_IN, 1)[7:]], [513])
    disk.queue_notify(0)
    assert driver.used() == [(w, 1), (r, 513)]
    assert driver.written(r) == b"\x11" * 512 + bytes([VIRTIO_BLK_S_OK])


def test_get_id_returns_a_stable_serial(disk, memory):
    driver = start(disk, memory)
    head = driver.post([header(VIRTIO_BLK_T_GET_ID)], [20, 1])
    disk.queue_notify(0)
    assert driver.used() == [(head, 21)]
    out = driver.written(head)
    assert out[:3] == b"xvm" and out[-1] == VIRTIO_BLK_S_OK
    assert out[:20] == disk.serial


def test_unknown_request_type_is_unsupported(disk, memory):
    driver = start(disk, memory)
    head = driver.post([header(99)], [1])
    disk.queue_notify(0)
    assert driver.written(head) == bytes([VIRTIO_BLK_S_UNSUPP])


@pytest.mark.parametrize("sector,length", [(SECTORS - 1, 1024), (SECTORS, 512), (2**64 - 1, 512), (0, 100)])
def test_out_of_range_or_partial_sector_requests_fail(disk, memory, sector, length):
    driver = start(disk, memory)
    r = driver.post([header(VIRTIO_BLK_T_IN, sector)], [length, 1])
    w = driver.post([header(VIRTIO_BLK_T_OUT, sector), b"x" * length], [1])
    disk.queue_notify(0)
    assert driver.used() == [(r, 1), (w, 1)]
    assert driver.written(r)[-1] == driver.written(w)[-1] == VIRTIO_BLK_S_IOERR
    assert driver.written(r)[:-1] == b"\xee" * length  # nothing was read into the buffer


def test_read_only_disk_fails_writes_and_offers_ro(memory, image):
    before = image.read_bytes()
    device = BlockDevice(memory, DiskConfig(image, read_only=True))
    try:
        assert device.avail_features & VIRTIO_BLK_F_RO
        driver = start(device, memory, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH)
        w = driver.post([header(VIRTIO_BLK_T_OUT, 0), b"z" * 512], [1])
        r = driver.post([header(VIRTIO_BLK_T_IN, 0)], [512, 1])
        device.queue_notify(0)
        assert driver.written(w) == bytes([VIRTIO_BLK_S_IOERR])
        assert driver.written(r)[-1] == VIRTIO_BLK_S_OK
        assert image.read_bytes() == before
    finally:
        device.close()


def test_short_header_fails_the_request(disk, memory):
    driver = start(disk, memory)
    head = driver.post([b"\0" * 8], [1])
    disk.queue_notify(0)
    assert driver.used() == [(head, 1)]
    assert driver.written(head) == bytes([VIRTIO_BLK_S_IOERR])
    assert disk.serving


def test_chain_without_status_byte_needs_reset(disk, memory):
    driver = start(disk, memory)
    driver.post([header(VIRTIO_BLK_T_FLUSH)], [])
    disk.queue_notify(0)
    assert driver.used() == []
    assert disk.status & VIRTIO_CONFIG_S_NEEDS_RESET
    assert not disk.serving
    assert disk.interrupt.config_signals == 1


def test_many_requests_complete_in_one_notify_with_one_interrupt(disk, memory, image):
    driver = start(disk, memory, 1 << VIRTIO_F_INDIRECT_DESC | 1 << VIRTIO_F_EVENT_IDX)
    heads = [driver.post([header(VIRTIO_BLK_T_IN, i)], [512, 1], indirect=bool(i % 2)) for i in range(8)]
    disk.queue_notify(0)
    assert [h for h, _ in driver.used()] == heads
    data = image.read_bytes()
    for i, head in enumerate(heads):
        assert driver.written(head) == data[i * 512:(i + 1) * 512] + b"\0"
    assert disk.interrupt.queue_signals == 1
    assert disk.completed[VIRTIO_BLK_S_OK] == 8


def test_reads_are_reported_to_the_dma_notifier(disk, memory):
    seen = []
    disk.set_dma_notifier(lambda gpa, n: seen.append((gpa, n)))
    driver = start(disk, memory)
    head = driver.post([header(VIRTIO_BLK_T_IN, 0)], [512, 1])
    disk.queue_notify(0)
    data_gpa, status_gpa = driver.buffers[head][1][0], driver.buffers[head][2][0]
    assert seen == [(data_gpa, 512), (status_gpa, 1)]


def test_qcow2_images_are_refused_with_the_conversion_command(tmp_path):
    path = tmp_path / "disk.qcow2"
    path.write_bytes(b"QFI\xfb" + bytes(508))
    with pytest.raises(ConfigError, match="qemu-img convert -O raw"):
        RawFile(path)


def test_a_disk_in_use_is_refused(image):
    first = RawFile(image)
    try:
        with pytest.raises(ConfigError, match="in use"):
            RawFile(image)
    finally:
        first.close()
    RawFile(image).close()


def test_short_read_at_end_of_file_reads_zeros(tmp_path, memory):
    path = tmp_path / "odd.img"
    path.write_bytes(b"\x55" * 700)
    backend = RawFile(path)
    try:
        assert backend.sectors == 1
        memory.fill(0x1000, 1024, 0xEE)
        backend.read_into(512, [memory.view(0x1000, 512), memory.view(0x2000, 512)])
        assert memory.read(0x1000, 512) == b"\x55" * 188 + bytes(324)
        assert memory.read(0x2000, 512) == bytes(512)
    finally:
        backend.close()


def test_cache_none_opens_the_image_synchronously(image):
    import fcntl
    import os

    backend = RawFile(image, cache="none")
    try:
        assert fcntl.fcntl(backend.fd, fcntl.F_GETFL) & os.O_DSYNC
    finally:
        backend.close()


def test_split_segments_cuts_at_byte_positions():
    segs = [(100, 10), (200, 6), (300, 4)]
    assert split_segments(segs, 12) == ([(100, 10), (200, 2)], [(202, 4), (300, 4)])
    assert split_segments(segs, 0) == ([], segs)
    assert split_segments(segs, 50) == (segs, [])


def test_without_preadv_pwritev_as_on_pypy(monkeypatch, tmp_path, memory):
    from xvm.devices.backends import block_file

    monkeypatch.setattr(block_file, "_preadv", None)
    monkeypatch.setattr(block_file, "_pwritev", None)
    path = tmp_path / "p.img"
    path.write_bytes(bytes(2048))
    backend = RawFile(path)
    try:
        memory.write(0x1000, b"a" * 512)
        memory.write(0x2000, b"b" * 512)
        writes = []
        pwrite = os.pwrite
        monkeypatch.setattr(block_file.os, "pwrite", lambda fd, data, at: writes.append(at) or pwrite(fd, data, at))
        backend.write_from(512, [memory.view(0x1000, 512), memory.view(0x2000, 512)])
        assert writes == [512]  # one write(2) per request: with O_DSYNC each one waits for the disk
        backend.read_into(0, [memory.view(0x3000, 1024), memory.view(0x4000, 1024)])
        assert memory.read(0x3000, 1024) == bytes(512) + b"a" * 512
        assert memory.read(0x4000, 1024) == b"b" * 512 + bytes(512)
    finally:
        backend.close()
