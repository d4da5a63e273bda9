"""virtio over PCI, the modern (1.x) interface (virtio spec 1.2 section 4.1).

A virtio-pci function is vendor 0x1AF4, device 0x1040 + virtio device ID,
revision 1 (4.1.2: a non-transitional device). Its registers live in memory
BARs, found through vendor-specific capabilities (struct virtio_pci_cap,
4.1.4): here BAR 2 (64-bit, 16 KiB) holds four 4 KiB regions

    0x0000  COMMON_CFG  features, status, queue setup (struct virtio_pci_common_cfg)
    0x1000  ISR_CFG     one byte: bit 0 queue interrupt, bit 1 config change; read clears
    0x2000  DEVICE_CFG  the device-specific configuration (VirtioDevice.config_read/write)
    0x3000  NOTIFY_CFG  queue i is kicked by a write at i * NOTIFY_OFF_MULTIPLIER

and BAR 0 (32-bit) the MSI-X table and PBA. A PCI_CFG capability (4.1.4.9)
also gives firmware-style access to the BARs through configuration space.

Interrupts (4.1.5): with MSI-X enabled, each queue and the configuration
change use the vector the driver wrote to queue_msix_vector / msix_config
(VIRTIO_MSI_NO_VECTOR: none); Linux's virtio_pci with CONFIG_PCI_MSI does
that. Otherwise INTx: the device sets an ISR bit and holds its interrupt pin
asserted until the driver reads the ISR (vp_interrupt in
drivers/virtio/virtio_pci_common.c).

Linux's probe (drivers/virtio/virtio_pci_modern_dev.c vp_modern_probe) needs
the COMMON, ISR and NOTIFY capabilities; DEVICE is optional. It reads
queue_size for each queue it wants, may write a smaller power of two, writes
the three ring addresses as 32-bit halves, reads back queue_msix_vector and
gives up on MSI-X if it reads VIRTIO_MSI_NO_VECTOR, then sets queue_enable.

Kicks arrive either as writes to the notify region (an MMIO exit) or, on kvm,
through `kick()` from the ioeventfd thread (machine/pci_devices.py QueueKicker);
`access_lock` serializes both with register accesses.

    transport = VirtioPciTransport(rng_device, msi_sink, irq_line, irq=10)
    bus.add(transport)
    transport.config.mapper = mapper        # BARs appear on the MMIO bus once the guest enables them
"""

from __future__ import annotations

import struct
import threading

from xvm.bus.irq import IrqLine, MsiSink
from xvm.devices.pci.config_space import (
    INTX_PIN_A,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_INTERRUPT_LINE,
    PciConfigSpace,
)
from xvm.devices.pci.host_bridge import PciFunction
from xvm.devices.pci.msix import Msix
from xvm.devices.virtio.device import VirtioDevice

PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040
VIRTIO_PCI_MODERN_REVISION = 1

# Capability types (4.1.4).
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

#: "No vector": interrupts for this queue/config are not wanted (or the vector was refused).
VIRTIO_MSI_NO_VECTOR = 0xFFFF

VIRTIO_PCI_ISR_QUEUE = 0x1
VIRTIO_PCI_ISR_CONFIG = 0x2

# struct virtio_pci_common_cfg field offsets (4.1.4.3).
VIRTIO_PCI_COMMON_DFSELECT = 0x00
VIRTIO_PCI_COMMON_DF = 0x04
VIRTIO_PCI_COMMON_GFSELECT = 0x08
VIRTIO_PCI_COMMON_GF = 0x0C
VIRTIO_PCI_COMMON_MSIX = 0x10
VIRTIO_PCI_COMMON_NUMQ = 0x12
VIRTIO_PCI_COMMON_STATUS = 0x14
VIRTIO_PCI_COMMON_CFGGENERATION = 0x15
VIRTIO_PCI_COMMON_Q_SELECT = 0x16
VIRTIO_PCI_COMMON_Q_SIZE = 0x18
VIRTIO_PCI_COMMON_Q_MSIX = 0x1A
VIRTIO_PCI_COMMON_Q_ENABLE = 0x1C
VIRTIO_PCI_COMMON_Q_NOFF = 0x1E
VIRTIO_PCI_COMMON_Q_DESCLO = 0x20
VIRTIO_PCI_COMMON_Q_AVAILLO = 0x28
VIRTIO_PCI_COMMON_Q_USEDLO = 0x30
VIRTIO_PCI_COMMON_CFG_SIZE = 0x38

# Layout of the virtio BAR (one 4 KiB page per region, as QEMU does).
VIRTIO_BAR = 2
MSIX_BAR = 0
REGION_SIZE = 0x1000
COMMON_OFFSET = 0x0000
ISR_OFFSET = 0x1000
DEVICE_OFFSET = 0x2000
NOTIFY_OFFSET = 0x3000
VIRTIO_BAR_SIZE = 0x4000
#: Bytes between two queues' notification addresses (queue_notify_off is the queue index).
NOTIFY_OFF_MULTIPLIER = 4

# PCI class codes QEMU gives virtio devices (what lspci shows).
_CLASS_CODES = {1: 0x020000, 2: 0x010000, 3: 0x078000, 4: 0x00FF00}
_CLASS_OTHER = 0xFF0000


def _virtio_cap(cfg_type: int, bar: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    """struct virtio_pci_cap after cap_vndr/cap_next: cap_len, cfg_type, bar, id, padding, offset, length."""
    return struct.pack("<BBBB2xII", 16 + len(extra), cfg_type, bar, 0, offset, length) + extra


class _MsixBar:
    """BAR 0: the MSI-X table followed by the PBA."""

    def __init__(self, msix: Msix, pba_offset: int) -> None:
        self.msix = msix
        self.pba_offset = pba_offset

    def read(self, offset: int, size: int) -> int:
        if offset >= self.pba_offset:
            return self.msix.pba_read(offset - self.pba_offset, size)
        return self.msix.table_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < self.pba_offset:
            self.msix.table_write(offset, size, value)


class VirtioPciTransport(PciFunction):
    """One virtio device as a PCI function; also the device's VirtioInterrupt."""

    def __init__(self, device: VirtioDevice, msi_sink: MsiSink, irq_line: IrqLine, irq: int) -> None:
        self.device = device
        self.irq_line = irq_line
        num_queues = len(device.queues)
        config = PciConfigSpace(
            PCI_VENDOR_ID_REDHAT_QUMRANET, VIRTIO_PCI_DEVICE_ID_BASE + device.device_id,
            _CLASS_CODES.get(device.device_id, _CLASS_OTHER), revision=VIRTIO_PCI_MODERN_REVISION,
            subsystem_vendor_id=PCI_VENDOR_ID_REDHAT_QUMRANET, subsystem_id=VIRTIO_PCI_DEVICE_ID_BASE
            + device.device_id, interrupt_pin=INTX_PIN_A)
        super().__init__(config)
        config.data[PCI_INTERRUPT_LINE] = irq

        # One vector per queue plus one for configuration changes (what Linux asks for first).
        self.msix = Msix(num_queues + 1, msi_sink)
        pba_offset = (self.msix.table_size + 7) & ~7
        msix_bar_size = max(REGION_SIZE, 1 << (pba_offset + self.msix.pba_size - 1).bit_length())
        config.add_bar(MSIX_BAR, msix_bar_size, _MsixBar(self.msix, pba_offset))
        notify_length = max(NOTIFY_OFF_MULTIPLIER * num_queues, 4)
        if notify_length > REGION_SIZE:
            raise ValueError(f"{num_queues} queues do not fit the notification region")
        config.add_bar(VIRTIO_BAR, VIRTIO_BAR_SIZE, self, is64=True)
        self.msix_cap = config.add_capability(PCI_CAP_ID_MSIX, self.msix.capability_body(MSIX_BAR, 0, pba_offset),
                                              Msix.capability_writable())
        config.add_capability(PCI_CAP_ID_VNDR, _virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_BAR, COMMON_OFFSET,
                                                           VIRTIO_PCI_COMMON_CFG_SIZE))
        config.add_capability(PCI_CAP_ID_VNDR, _virtio_cap(
            VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_BAR, NOTIFY_OFFSET, notify_length,
            struct.pack("<I", NOTIFY_OFF_MULTIPLIER)))
        config.add_capability(PCI_CAP_ID_VNDR, _virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_BAR, ISR_OFFSET, 1))
        config.add_capability(PCI_CAP_ID_VNDR, _virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_BAR, DEVICE_OFFSET,
                                                           REGION_SIZE))
        # PCI_CFG: bar, offset, length and the data window are the driver's (4.1.4.9).
        self.pci_cfg_cap = config.add_capability(
            PCI_CAP_ID_VNDR, _virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, b"\0" * 4),
            writable=b"\0\0\xff\0\0\0" + b"\xff" * 12)

        #: Serializes register accesses from vCPUs with kicks from an ioeventfd thread.
        #: Lock order: access_lock -> device locks -> _lock (ISR) -> MSI-X lock.
        self.access_lock = threading.RLock()
        self._lock = threading.Lock()
        self._reset_transport()
        device.interrupt = self

    def _reset_transport(self) -> None:
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.device.queues)
        self.isr = 0
        self._update_intx()

    # --- configuration space hooks ----------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        data = self.pci_cfg_cap + 16
        if offset == data and size in (1, 2, 4):
            bar, window, length = self._pci_cfg_window()
            if bar == VIRTIO_BAR and length == size:
                return self.read(window, size)
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.config.write(offset, size, value)
        end = offset + size
        if offset < self.msix_cap + 4 and end > self.msix_cap + 2:
            self.msix.write_message_control(self.config.u16(self.msix_cap + 2))
        if offset <= PCI_COMMAND + 1 and end > PCI_COMMAND:
            self._update_intx()
        data = self.pci_cfg_cap + 16
        if offset == data and size in (1, 2, 4):
            bar, window, length = self._pci_cfg_window()
            if bar == VIRTIO_BAR and length == size:
                self.write(window, size, value)

    def _pci_cfg_window(self) -> tuple:
        cap = self.pci_cfg_cap
        return self.config.u8(cap + 4), self.config.u32(cap + 8), self.config.u32(cap + 12)

    # --- interrupts (VirtioInterrupt) ---------------------------------------------------
    def signal_queue(self, index: int) -> None:
        self._signal(self.queue_vectors[index], VIRTIO_PCI_ISR_QUEUE)

    def signal_config(self) -> None:
        self._signal(self.config_vector, VIRTIO_PCI_ISR_CONFIG)

    def _signal(self, vector: int, isr_bit: int) -> None:
        if self.msix.enabled:
            if vector != VIRTIO_MSI_NO_VECTOR:
                self.msix.notify(vector)
            return
        with self._lock:
            self.isr |= isr_bit
            self._update_intx()

    def _update_intx(self) -> None:
        """Drive INTx from the ISR unless the driver disabled INTx in COMMAND (or uses MSI-X)."""
        level = bool(self.isr) and not self.config.command & PCI_COMMAND_INTX_DISABLE
        self.config.set_interrupt_status(bool(self.isr))
        self.irq_line.set_level(level)

    # --- the virtio BAR -------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self.access_lock:
            return self._bar_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.access_lock:
            self._bar_write(offset, size, value)

    def kick(self, index: int) -> None:
        """The driver notified queue `index` (a notify-region write, or its ioeventfd on kvm)."""
        with self.access_lock:
            if index < len(self.device.queues) and self.device.serving:
                self.device.queue_notify(index)

    @staticmethod
    def notify_offset(index: int) -> int:
        """Where in the virtio BAR the driver writes to kick queue `index` (4.1.4.4)."""
        return NOTIFY_OFFSET + index * NOTIFY_OFF_MULTIPLIER

    def _bar_read(self, offset: int, size: int) -> int:
        if offset < ISR_OFFSET:
            return self._common_read(offset, size)
        if offset < DEVICE_OFFSET:
            if offset != ISR_OFFSET:
                return 0
            with self._lock:
                value, self.isr = self.isr, 0
                self._update_intx()
            return value
        if offset < NOTIFY_OFFSET:
            return self.device.config_read(offset - DEVICE_OFFSET, size)
        return 0

    def _bar_write(self, offset: int, size: int, value: int) -> None:
        if offset < ISR_OFFSET:
            self._common_write(offset, size, value)
        elif DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            self.device.config_write(offset - DEVICE_OFFSET, size, value)
        elif offset >= NOTIFY_OFFSET:
            self.kick((offset - NOTIFY_OFFSET) // NOTIFY_OFF_MULTIPLIER)

    def _selected_queue(self):
        if self.queue_select < len(self.device.queues):
            return self.device.queues[self.queue_select]
        return None

    def _common_bytes(self) -> bytes:
        device = self.device
        queue = self._selected_queue()
        if queue is None:
            q_size = q_vector = q_enable = q_notify_off = 0
            desc = avail = used = 0
        else:
            q_size, q_enable, q_notify_off = queue.size, int(queue.ready), self.queue_select
            q_vector = self.queue_vectors[self.queue_select]
            desc, avail, used = queue.desc_addr, queue.avail_addr, queue.used_addr
        return struct.pack(
            "<IIIIHHBBHHHHHQQQ",
            self.device_feature_select, device.device_feature_word(self.device_feature_select),
            self.driver_feature_select, device.acked_features >> (32 * self.driver_feature_select) & 0xFFFFFFFF
            if self.driver_feature_select < 2 else 0,
            self.config_vector, len(device.queues), device.status, device.config_generation,
            self.queue_select, q_size, q_vector, q_enable, q_notify_off, desc, avail, used)

    def _common_read(self, offset: int, size: int) -> int:
        if offset + size > VIRTIO_PCI_COMMON_CFG_SIZE:
            return 0
        return int.from_bytes(self._common_bytes()[offset:offset + size], "little")

    def _common_write(self, offset: int, size: int, value: int) -> None:
        device = self.device
        if offset == VIRTIO_PCI_COMMON_DFSELECT and size == 4:
            self.device_feature_select = value
        elif offset == VIRTIO_PCI_COMMON_GFSELECT and size == 4:
            self.driver_feature_select = value
        elif offset == VIRTIO_PCI_COMMON_GF and size == 4:
            device.write_driver_features(self.driver_feature_select, value)
        elif offset == VIRTIO_PCI_COMMON_MSIX and size == 2:
            self.config_vector = self._accept_vector(value)
        elif offset == VIRTIO_PCI_COMMON_STATUS and size == 1:
            device.write_status(value)
            if value == 0:
                self._reset_transport()
        elif offset == VIRTIO_PCI_COMMON_Q_SELECT and size == 2:
            self.queue_select = value
        elif VIRTIO_PCI_COMMON_Q_SIZE <= offset < VIRTIO_PCI_COMMON_CFG_SIZE:
            self._queue_write(offset, size, value)

    def _queue_write(self, offset: int, size: int, value: int) -> None:
        queue = self._selected_queue()
        if queue is None:
            return
        if offset == VIRTIO_PCI_COMMON_Q_MSIX and size == 2:
            self.queue_vectors[self.queue_select] = self._accept_vector(value)
        elif offset == VIRTIO_PCI_COMMON_Q_ENABLE and size == 2:
            if value == 1:
                self.device.enable_queue(self.queue_select)
        elif queue.ready:
            return  # 4.1.4.3.2: size and addresses are fixed once the queue is enabled
        elif offset == VIRTIO_PCI_COMMON_Q_SIZE and size == 2:
            queue.size = value
        elif VIRTIO_PCI_COMMON_Q_DESCLO <= offset < VIRTIO_PCI_COMMON_CFG_SIZE and size in (4, 8) \
                and offset % size == 0:
            field = ("desc_addr", "avail_addr", "used_addr")[(offset - VIRTIO_PCI_COMMON_Q_DESCLO) // 8]
            shift = 32 if offset % 8 else 0
            mask = ((1 << (8 * size)) - 1) << shift
            setattr(queue, field, getattr(queue, field) & ~mask | (value << shift) & mask)

    def _accept_vector(self, vector: int) -> int:
        """A vector the table has, else VIRTIO_MSI_NO_VECTOR (the driver reads it back, 4.1.5.1.2)."""
        return vector if vector < self.msix.vectors else VIRTIO_MSI_NO_VECTOR
