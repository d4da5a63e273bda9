"""virtio-rng and virtio-console device logic, and the virtio-mmio transport, against the fake driver."""

from __future__ import annotations

import pytest

from xvm.devices.virtio.console import INPUT_LIMIT, RECEIVEQ, TRANSMITQ, VirtioConsole
from xvm.devices.virtio.device import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
)
from xvm.devices.virtio.queue import VIRTIO_F_EVENT_IDX
from xvm.devices.virtio.rng import MAX_BYTES_PER_REQUEST, VirtioRng
from xvm.devices.virtio.transport_mmio import (
    VIRT_MAGIC,
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VERSION,
    VirtioMmioTransport,
    virtio_mmio_cmdline,
)

READY = (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK
         | VIRTIO_CONFIG_S_DRIVER_OK)


def activate(device, drivers, features=1 << VIRTIO_F_VERSION_1):
    """What a transport does for the driver: features, queue enable, DRIVER_OK."""
    device.write_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    device.write_driver_features(0, features & 0xFFFFFFFF)
    device.write_driver_features(1, features >> 32)
    device.write_status(READY & ~VIRTIO_CONFIG_S_DRIVER_OK)
    for index, driver in enumerate(drivers):
        if driver is not None:
            device.enable_queue(index)
    device.write_status(READY)
    assert device.activated


def test_rng_fills_requests_bounded(memory, make_driver):
    rng = VirtioRng(memory, entropy=lambda n: b"\xab" * n)
    driver = make_driver(memory, rng.queues[0], size=8)
    activate(rng, [driver])
    small = driver.post([], [3, 5])
    rng.queue_notify(0)
    assert driver.used() == [(small, 8)] and driver.written(small) == b"\xab" * 8
    big = driver.post([], [MAX_BYTES_PER_REQUEST + 100])
    rng.queue_notify(0)
    assert driver.used() == [(big, MAX_BYTES_PER_REQUEST)]
    assert rng.interrupt.queue_signals == 2


def test_rng_with_event_idx_and_reset(memory, make_driver):
    rng = VirtioRng(memory, entropy=lambda n: b"\x01" * n)
    driver = make_driver(memory, rng.queues[0], size=8)
    activate(rng, [driver], features=1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_EVENT_IDX)
    assert rng.queues[0].event_idx
    driver.post([], [4])
    rng.queue_notify(0)
    assert driver.avail_event() == 1
    rng.write_status(0)
    assert not rng.activated and rng.acked_features == 0 and not rng.queues[0].ready


def test_driver_ok_without_features_ok_needs_reset(memory):
    rng = VirtioRng(memory)
    rng.write_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK)
    assert rng.status & VIRTIO_CONFIG_S_NEEDS_RESET and not rng.activated


def test_features_frozen_after_features_ok(memory):
    rng = VirtioRng(memory)
    activate(rng, [])
    rng.write_driver_features(0, 0xFFFF_FFFF)
    assert rng.acked_features == 1 << VIRTIO_F_VERSION_1


def test_console_output_and_input(memory, make_driver):
    out = []
    console = VirtioConsole(memory, out.append)
    rx = make_driver(memory, console.queues[RECEIVEQ], size=8)
    tx = make_driver(memory, console.queues[TRANSMITQ], size=8, base=0x1000)
    assert console.receive(b"early") == 5  # held until the driver posts buffers
    activate(console, [rx, tx])
    head = tx.post([b"hello ", b"hvc0\n"])
    console.queue_notify(TRANSMITQ)
    assert out == [b"hello hvc0\n"] and tx.used() == [(head, 0)]
    first = rx.post([], [3])
    console.queue_notify(RECEIVEQ)
    assert rx.used() == [(first, 3)] and rx.written(first) == b"ear"
    second = rx.post([], [16])
    console.queue_notify(RECEIVEQ)
    assert rx.used() == [(second, 2)] and rx.written(second)[:2] == b"ly"
    third = rx.post([], [16])
    console.queue_notify(RECEIVEQ)
    assert rx.used() == []
    assert console.receive(b"ls\n") == 3
    assert rx.used() == [(third, 3)] and console.pending_input == 0


def test_console_input_is_bounded(memory):
    console = VirtioConsole(memory, lambda data: None)
    assert console.receive(b"x" * (INPUT_LIMIT + 10)) == INPUT_LIMIT
    assert console.receive(b"y") == 0


def test_console_emergency_write(memory):
    out = []
    console = VirtioConsole(memory, out.append)
    console.config_write(8, 4, ord("!"))  # EMERG_WRITE not negotiated yet: dropped
    activate(console, [], features=1 << VIRTIO_F_VERSION_1 | 1 << 2)
    console.config_write(8, 4, ord("!"))
    assert out == [b"!"]
    assert console.config_read(4, 4) == 1  # max_nr_ports


# --- virtio-mmio ------------------------------------------------------------------------------
def test_mmio_cmdline():
    assert virtio_mmio_cmdline(0xD000_0000, 5) == "virtio_mmio.device=4K@0xd0000000:5"


def test_mmio_linux_flow(memory, make_driver, irq):
    rng = VirtioRng(memory, entropy=lambda n: b"\x07" * n)
    t = VirtioMmioTransport(rng, irq)
    assert t.read(VIRTIO_MMIO_MAGIC_VALUE, 4) == VIRT_MAGIC
    assert t.read(VIRTIO_MMIO_VERSION, 4) == 2
    assert t.read(VIRTIO_MMIO_DEVICE_ID, 4) == 4
    t.write(VIRTIO_MMIO_STATUS, 4, 0)
    t.write(VIRTIO_MMIO_STATUS, 4, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    t.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, 1)
    assert t.read(VIRTIO_MMIO_DEVICE_FEATURES, 4) & 1
    t.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 4, 1)
    t.write(VIRTIO_MMIO_DRIVER_FEATURES, 4, 1)
    t.write(VIRTIO_MMIO_STATUS, 4, READY & ~VIRTIO_CONFIG_S_DRIVER_OK)
    assert t.read(VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_FEATURES_OK
    t.write(VIRTIO_MMIO_QUEUE_SEL, 4, 0)
    assert t.read(VIRTIO_MMIO_QUEUE_NUM_MAX, 4) == 256
    driver = make_driver(memory, rng.queues[0], size=8)
    rng.queues[0].desc_addr = rng.queues[0].avail_addr = rng.queues[0].used_addr = 0
    t.write(VIRTIO_MMIO_QUEUE_NUM, 4, 8)
    for reg, address in ((VIRTIO_MMIO_QUEUE_DESC_LOW, driver.desc), (VIRTIO_MMIO_QUEUE_AVAIL_LOW, driver.avail),
                         (VIRTIO_MMIO_QUEUE_USED_LOW, driver.used_ring)):
        t.write(reg, 4, address)
        t.write(reg + 4, 4, 0)
    t.write(VIRTIO_MMIO_QUEUE_READY, 4, 1)
    t.write(VIRTIO_MMIO_STATUS, 4, READY)
    assert rng.activated
    head = driver.post([], [4])
    t.write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0)
    assert driver.used() == [(head, 4)]
    assert irq.level and t.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4) == 1
    t.write(VIRTIO_MMIO_INTERRUPT_ACK, 4, 1)
    assert not irq.level
    assert t.read(VIRTIO_MMIO_CONFIG, 4) == 0
    t.write(VIRTIO_MMIO_QUEUE_SEL, 4, 3)
    assert t.read(VIRTIO_MMIO_QUEUE_NUM_MAX, 4) == 0
    t.write(VIRTIO_MMIO_STATUS, 4, 0)
    assert not rng.activated and t.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4) == 0


@pytest.mark.parametrize("offset", [0x3, 0x101, 0xFFC])
def test_mmio_odd_accesses_are_harmless(memory, irq, offset):
    t = VirtioMmioTransport(VirtioRng(memory), irq)
    t.write(offset, 1, 0xFF)
    t.read(offset, 1)
