"""virtio over MMIO, version 2 (virtio spec 1.2 section 4.2.2).

One 4 KiB page of 32-bit registers per device and one interrupt line; the
device-specific configuration starts at 0x100. No bus scan finds it: Linux
(drivers/virtio/virtio_mmio.c with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) is
told on the command line, `virtio_mmio.device=4K@0xd0000000:5`, which
`virtio_mmio_cmdline` builds. The interrupt is level-triggered: the line is
high while InterruptStatus is non-zero, and the driver clears bits by
writing InterruptACK. Model: Firecracker devices/virtio/transport/mmio.rs.

    mmio.insert(VirtioMmioTransport(rng, vm.irq_line(5)), 0xD0000000, 0x1000)
"""

from __future__ import annotations

import threading

from xvm.bus.irq import IrqLine
from xvm.devices.virtio.device import VirtioDevice

VIRT_MAGIC = 0x74726976  # "virt"
VIRT_VERSION = 2
#: VendorID reported to the driver ("XVM\0"; drivers do not look at it).
VIRT_VENDOR = 0x004D5658

# Register offsets (4.2.2, Linux include/uapi/linux/virtio_mmio.h).
VIRTIO_MMIO_MAGIC_VALUE = 0x000
VIRTIO_MMIO_VERSION = 0x004
VIRTIO_MMIO_DEVICE_ID = 0x008
VIRTIO_MMIO_VENDOR_ID = 0x00C
VIRTIO_MMIO_DEVICE_FEATURES = 0x010
VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014
VIRTIO_MMIO_DRIVER_FEATURES = 0x020
VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024
VIRTIO_MMIO_QUEUE_SEL = 0x030
VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034
VIRTIO_MMIO_QUEUE_NUM = 0x038
VIRTIO_MMIO_QUEUE_READY = 0x044
VIRTIO_MMIO_QUEUE_NOTIFY = 0x050
VIRTIO_MMIO_INTERRUPT_STATUS = 0x060
VIRTIO_MMIO_INTERRUPT_ACK = 0x064
VIRTIO_MMIO_STATUS = 0x070
VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080
VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084
VIRTIO_MMIO_QUEUE_AVAIL_LOW = 0x090
VIRTIO_MMIO_QUEUE_AVAIL_HIGH = 0x094
VIRTIO_MMIO_QUEUE_USED_LOW = 0x0A0
VIRTIO_MMIO_QUEUE_USED_HIGH = 0x0A4
VIRTIO_MMIO_SHM_LEN_LOW = 0x0B0
VIRTIO_MMIO_SHM_LEN_HIGH = 0x0B4
VIRTIO_MMIO_CONFIG_GENERATION = 0x0FC
VIRTIO_MMIO_CONFIG = 0x100

VIRTIO_MMIO_INT_VRING = 0x1
VIRTIO_MMIO_INT_CONFIG = 0x2

_QUEUE_ADDRESS = {
    VIRTIO_MMIO_QUEUE_DESC_LOW: ("desc_addr", 0), VIRTIO_MMIO_QUEUE_DESC_HIGH: ("desc_addr", 32),
    VIRTIO_MMIO_QUEUE_AVAIL_LOW: ("avail_addr", 0), VIRTIO_MMIO_QUEUE_AVAIL_HIGH: ("avail_addr", 32),
    VIRTIO_MMIO_QUEUE_USED_LOW: ("used_addr", 0), VIRTIO_MMIO_QUEUE_USED_HIGH: ("used_addr", 32),
}


def virtio_mmio_cmdline(base: int, irq: int, size: int = 0x1000) -> str:
    """The Linux command-line word that declares one virtio-mmio device (virtio_mmio.c vm_cmdline_set)."""
    return f"virtio_mmio.device={size // 1024}K@{base:#x}:{irq}"


class VirtioMmioTransport:
    """One virtio device behind a virtio-mmio register page; also its VirtioInterrupt."""

    def __init__(self, device: VirtioDevice, irq_line: IrqLine) -> None:
        self.device = device
        self.irq_line = irq_line
        self._lock = threading.Lock()
        self._reset_transport()
        device.interrupt = self

    def _reset_transport(self) -> None:
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.irq_line.set_level(False)

    # --- VirtioInterrupt -------------------------------------------------------------
    def signal_queue(self, index: int) -> None:
        self._raise(VIRTIO_MMIO_INT_VRING)

    def signal_config(self) -> None:
        self._raise(VIRTIO_MMIO_INT_CONFIG)

    def _raise(self, bit: int) -> None:
        with self._lock:
            self.interrupt_status |= bit
            self.irq_line.set_level(True)

    # --- registers -----------------------------------------------------------------------
    def _queue(self):
        queues = self.device.queues
        return queues[self.queue_sel] if self.queue_sel < len(queues) else None

    def read(self, offset: int, size: int) -> int:
        device = self.device
        if offset >= VIRTIO_MMIO_CONFIG:
            return device.config_read(offset - VIRTIO_MMIO_CONFIG, size)
        if size != 4:
            return 0
        queue = self._queue()
        if offset == VIRTIO_MMIO_MAGIC_VALUE:
            return VIRT_MAGIC
        if offset == VIRTIO_MMIO_VERSION:
            return VIRT_VERSION
        if offset == VIRTIO_MMIO_DEVICE_ID:
            return device.device_id
        if offset == VIRTIO_MMIO_VENDOR_ID:
            return VIRT_VENDOR
        if offset == VIRTIO_MMIO_DEVICE_FEATURES:
            return device.device_feature_word(self.device_features_sel)
        if offset == VIRTIO_MMIO_QUEUE_NUM_MAX:
            return queue.max_size if queue is not None else 0
        if offset == VIRTIO_MMIO_QUEUE_READY:
            return int(queue is not None and queue.ready)
        if offset == VIRTIO_MMIO_INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == VIRTIO_MMIO_STATUS:
            return device.status
        if offset in (VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_LEN_HIGH):
            return 0xFFFFFFFF  # no shared memory regions (4.2.2.1)
        if offset == VIRTIO_MMIO_CONFIG_GENERATION:
            return device.config_generation
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        device = self.device
        if offset >= VIRTIO_MMIO_CONFIG:
            device.config_write(offset - VIRTIO_MMIO_CONFIG, size, value)
            return
        if size != 4:
            return
        queue = self._queue()
        if offset == VIRTIO_MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == VIRTIO_MMIO_DRIVER_FEATURES:
            device.write_driver_features(self.driver_features_sel, value)
        elif offset == VIRTIO_MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == VIRTIO_MMIO_QUEUE_SEL:
            self.queue_sel = value
        elif offset == VIRTIO_MMIO_QUEUE_NOTIFY:
            if value < len(device.queues) and device.serving:
                device.queue_notify(value)
        elif offset == VIRTIO_MMIO_INTERRUPT_ACK:
            with self._lock:
                self.interrupt_status &= ~value
                if not self.interrupt_status:
                    self.irq_line.set_level(False)
        elif offset == VIRTIO_MMIO_STATUS:
            device.write_status(value)
            if value == 0:
                self._reset_transport()
        elif queue is None:
            return
        elif offset == VIRTIO_MMIO_QUEUE_READY:
            if value == 1 and not queue.ready:
                device.enable_queue(self.queue_sel)
            elif value == 0 and not device.activated:
                queue.ready = False
        elif queue.ready:
            return  # size and addresses are fixed while the queue is live
        elif offset == VIRTIO_MMIO_QUEUE_NUM:
            queue.size = value
        elif offset in _QUEUE_ADDRESS:
            field, shift = _QUEUE_ADDRESS[offset]
            setattr(queue, field, getattr(queue, field) & ~(0xFFFFFFFF << shift) | value << shift)
