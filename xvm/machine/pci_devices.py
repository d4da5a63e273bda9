"""Wire PCI bus 0 and the virtio devices a MachineConfig asks for into a machine.

The builder calls `add_pci_and_virtio` once the interrupt controllers exist
(on bt the MSI sink and IRQ lines come from them). It puts configuration
mechanism #1 at 0xCF8, assigns every BAR an address in the 32-bit PCI window
the way firmware would (Linux keeps firmware assignments it can claim), and
maps BARs on the MMIO bus only while the guest lets the device decode memory.

Devices: virtio-rng always; virtio-console when the config asks for it;
one virtio-blk per --disk and one virtio-net per --net (from block.py and
net.py, imported only when wanted).

On kvm, queue kicks bypass the vCPU thread: each queue's notify address is
an ioeventfd (KVM_IOEVENTFD), so the guest's write completes inside KVM and
one I/O thread (QueueKicker) runs the device. The addresses follow the BAR
as the guest moves it. Where KVM refuses (or on bt) kicks stay MMIO exits.
MSI-X interrupts on kvm are eventfd writes into irqfds on MSI routes
(IrqfdMsiSink); on bt they go to the emulated LAPICs (the router's MsiSink).

virtio-mmio devices are not discovered by a bus scan: `add_virtio_mmio`
places one and returns the `virtio_mmio.device=` word its kernel needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import threading
from typing import Callable, Optional

from xvm.arch.x86 import layout
from xvm.bus import Bus
from xvm.bus.bus import BusError
from xvm.bus.irq import MsiMessage, MsiSink
from xvm.config import MachineConfig
from xvm.devices.pci.host_bridge import PciBus, SharedIrqLine
from xvm.devices.virtio.console import VirtioConsole
from xvm.devices.virtio.device import VirtioDevice
from xvm.devices.virtio.rng import VirtioRng
from xvm.devices.virtio.transport_mmio import VirtioMmioTransport, virtio_mmio_cmdline
from xvm.devices.virtio.transport_pci import VirtioPciTransport
from xvm.engines.base import VmBackend
from xvm.errors import ConfigError, XvmError
from xvm.memory import GuestMemory

log = logging.getLogger(__name__)


_EFD_CLOEXEC = 0o2000000
_EFD_NONBLOCK = 0o4000


#: An eventfd write adds this 8-byte counter value.
_ONE = (1).to_bytes(8, "little")


def _eventfd() -> int:
    """A non-blocking eventfd (os.eventfd is Python 3.10+; libc's serves 3.9 and PyPy)."""
    if hasattr(os, "eventfd"):
        return os.eventfd(0, _EFD_CLOEXEC | _EFD_NONBLOCK)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.eventfd(0, _EFD_CLOEXEC | _EFD_NONBLOCK)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "eventfd failed")
    return fd


class QueueKicker:
    """kvm: one ioeventfd per virtqueue notify address, served by one I/O thread.

    `attach` registers a transport's queues at its BAR address, `detach` drops
    them (the guest moved or disabled the BAR). The thread calls
    VirtioPciTransport.kick, which takes the transport's access lock, so a
    kick never races a register access from a vCPU.
    """

    def __init__(self, vm: VmBackend) -> None:
        self.vm = vm
        self._poll = select.epoll()
        self._fds: dict = {}  # eventfd -> (transport, queue index, address)
        self._by_base: dict = {}  # BAR base -> [eventfd]
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._poll.register(self._stop_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="xvm-virtio-kicks", daemon=True)
        self._thread.start()

    def attach(self, transport: VirtioPciTransport, base: int) -> None:
        fds = []
        try:
            for index in range(len(transport.device.queues)):
                address = base + transport.notify_offset(index)
                fd = _eventfd()
                try:
                    self.vm.register_ioeventfd(fd, address, 2)  # Linux kicks with a 16-bit write
                except BaseException:
                    os.close(fd)
                    raise
                fds.append(fd)
                with self._lock:
                    self._fds[fd] = (transport, index, address)
                self._poll.register(fd, select.EPOLLIN)
        except (XvmError, OSError) as error:
            log.info("virtio kicks at %#x stay MMIO exits: %s", base, error)
            self._release(fds)
            return
        self._by_base[base] = fds

    def detach(self, base: int) -> None:
        self._release(self._by_base.pop(base, []))

    def _release(self, fds: list) -> None:
        for fd in fds:
            with self._lock:
                _transport, _index, address = self._fds.pop(fd)
            self._poll.unregister(fd)
            try:
                self.vm.unregister_ioeventfd(fd, address, 2)
            except (XvmError, OSError, AttributeError) as error:  # the VM may already be closed
                log.debug("ioeventfd at %#x: %s", address, error)
            os.close(fd)

    def _run(self) -> None:
        while True:
            for fd, _events in self._poll.poll():
                if fd == self._stop_r:
                    return
                with self._lock:
                    target = self._fds.get(fd)
                if target is None:
                    continue
                try:
                    os.read(fd, 8)
                except OSError:  # drained already, or detached (BAR moved) meanwhile
                    continue
                transport, index = target[0], target[1]
                try:
                    transport.kick(index)
                except Exception as error:  # noqa: BLE001 - this thread must keep serving every device
                    # A host-side failure (a backend's DeviceError) breaks this device, not the others.
                    log.exception("virtio kick of %s queue %d failed", transport.device.name, index)
                    transport.device.set_needs_reset(f"host error: {error}")

    def close(self) -> None:
        """Stop the thread and release every eventfd."""
        os.write(self._stop_w, b"x")
        self._thread.join()
        for base in list(self._by_base):
            self.detach(base)
        self._poll.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


class IrqfdMsiSink:
    """kvm: MSI-X messages go through irqfds bound to MSI routes (KVM_SET_GSI_ROUTING + KVM_IRQFD).

    Each distinct message (address, data) the guest programs gets a GSI from
    24 up, an MSI route to it and an eventfd bound to that GSI; sending the
    message is then one eventfd write, injected by KVM with no ioctl and no
    userspace irqchip. Linux programs one message per vector and keeps it
    (until it moves the IRQ to another CPU), so the table stays small; the
    routes are set up the first time a message is sent. Past MAX_MSI_ROUTES
    messages, or where KVM refuses routes or irqfds, messages go through
    `fallback` (KVM_SIGNAL_MSI).
    """

    MAX_MSI_ROUTES = 256

    def __init__(self, vm: VmBackend, fallback: MsiSink) -> None:
        self.vm = vm
        self.fallback = fallback
        self.routes: dict = {}  # GSI -> MsiMessage
        self._eventfds: dict = {}  # MsiMessage -> (eventfd, GSI)
        self._lock = threading.Lock()
        self._broken = False

    def signal_msi(self, message: MsiMessage) -> None:
        with self._lock:
            target = self._eventfds.get(message)
            if target is None:
                target = self._add_route(message)
        if target is None:
            self.fallback.signal_msi(message)
        else:
            os.write(target[0], _ONE)

    def _add_route(self, message: MsiMessage) -> Optional[tuple]:
        """Route a new message through its own GSI and irqfd; None: use the fallback (called locked)."""
        if self._broken or len(self.routes) >= self.MAX_MSI_ROUTES:
            return None
        gsi = layout.IOAPIC_PINS + len(self.routes)  # the GSIs above the IOAPIC's pins
        fd = _eventfd()
        try:
            self.vm.set_msi_routes({**self.routes, gsi: message})
            self.vm.register_irqfd(fd, gsi)
        except (XvmError, OSError) as error:
            os.close(fd)
            self._broken = True
            log.info("MSI-X messages go through KVM_SIGNAL_MSI, not irqfds: %s", error)
            return None
        self.routes[gsi] = message
        self._eventfds[message] = (fd, gsi)
        return fd, gsi

    def close(self) -> None:
        """Release the eventfds (KVM drops an irqfd whose eventfd is closed)."""
        with self._lock:
            for fd, gsi in self._eventfds.values():
                try:
                    self.vm.unregister_irqfd(fd, gsi)
                except (XvmError, OSError, AttributeError) as error:  # the VM may already be closed
                    log.debug("irqfd of GSI %d: %s", gsi, error)
                os.close(fd)
            self._eventfds.clear()


class MmioBarMapper:
    """BarMapper over the MMIO bus: BARs come and go as the guest programs them.

    With a QueueKicker, a virtio BAR's notify addresses become ioeventfds while it is mapped.
    """

    def __init__(self, mmio: Bus, kicker: Optional[QueueKicker] = None) -> None:
        self.mmio = mmio
        self.kicker = kicker

    def map(self, base: int, length: int, device: object) -> bool:
        try:
            self.mmio.insert(device, base, length)
        except BusError as error:
            log.warning("PCI BAR at %#x+%#x not decoded: %s", base, length, error)
            return False
        if self.kicker is not None and isinstance(device, VirtioPciTransport):
            self.kicker.attach(device, base)
        return True

    def unmap(self, base: int) -> None:
        self.mmio.remove(base)
        if self.kicker is not None:
            self.kicker.detach(base)


class BarAllocator:
    """Hands out naturally aligned BAR addresses from the 32-bit PCI window, as firmware does."""

    def __init__(self, start: int = layout.PCI_MMIO_START, size: int = layout.PCI_MMIO_SIZE) -> None:
        self.next = start
        self.end = start + size

    def allocate(self, size: int) -> int:
        base = (self.next + size - 1) & ~(size - 1)
        if base + size > self.end:
            raise ConfigError("too many PCI devices for the PCI MMIO window: use fewer --disk/--net")
        self.next = base + size
        return base


class VirtioDevices(list):
    """The VirtioDevices of a machine; `close()` stops them and the kick thread."""

    kicker: Optional[QueueKicker] = None
    msi: Optional[IrqfdMsiSink] = None

    def close(self) -> None:
        if self.kicker is not None:
            self.kicker.close()
            self.kicker = None
        for device in self:
            device.close()
        if self.msi is not None:
            self.msi.close()
            self.msi = None


def add_pci_and_virtio(config: MachineConfig, vm: VmBackend, pio: Bus, mmio: Bus, memory: GuestMemory,
                       console_out: Callable[[bytes], None]) -> VirtioDevices:
    """Build PCI bus 0 with the virtio devices `config` asks for; returns the VirtioDevices.

    The machine calls `close()` on the returned list at shutdown; a
    VirtioConsole in it takes host input through `receive()`.
    """
    devices = VirtioDevices([VirtioRng(memory)])
    if config.virtio_console:
        devices.append(VirtioConsole(memory, console_out))
    if config.disks:
        from xvm.devices.virtio.block import BlockDevice

        devices.extend(BlockDevice(memory, disk) for disk in config.disks)
    if config.nets:
        from xvm.devices.virtio.net import NetDevice

        devices.extend(NetDevice(memory, net) for net in config.nets)

    bus = PciBus()
    pio.insert(bus.conf1, layout.PORT_PCI_CONFIG_ADDRESS, 8)
    if hasattr(vm, "register_ioeventfd"):
        devices.kicker = QueueKicker(vm)
    mapper = MmioBarMapper(mmio, devices.kicker)
    bars = BarAllocator()
    msi_sink = vm.msi_sink()
    if hasattr(vm, "set_msi_routes"):
        devices.msi = msi_sink = IrqfdMsiSink(vm, msi_sink)
    dma_written = getattr(vm, "memory_written", None)
    intx = [SharedIrqLine(vm.irq_line(irq)) for irq in layout.PCI_INTX_IRQS]
    for device in devices:
        device.set_dma_notifier(dma_written)
        slot = len(bus.devices())  # the next free slot (0 is the host bridge)
        line = (slot - 1) % len(intx)
        transport = VirtioPciTransport(device, msi_sink, intx[line].pin(), layout.PCI_INTX_IRQS[line])
        bus.add(transport, slot)
        for bar in sorted(transport.config.bars.values(), key=lambda b: -b.size):
            transport.config.set_bar_address(bar.index, bars.allocate(bar.size))
        transport.config.mapper = mapper
        log.info("PCI 00:%02x.0 %s, INTx IRQ %d", slot, device.name, layout.PCI_INTX_IRQS[line])
    return devices


def add_virtio_mmio(device: VirtioDevice, vm: VmBackend, mmio: Bus, index: int,
                    dma_written: Optional[Callable[[int, int], None]] = None) -> str:
    """Place `device` in virtio-mmio window `index`; returns the kernel command-line word for it."""
    base = layout.VIRTIO_MMIO_START + index * layout.VIRTIO_MMIO_SIZE
    irq = layout.VIRTIO_MMIO_IRQ_BASE + index
    device.set_dma_notifier(dma_written if dma_written is not None else getattr(vm, "memory_written", None))
    mmio.insert(VirtioMmioTransport(device, vm.irq_line(irq)), base, layout.VIRTIO_MMIO_SIZE)
    return virtio_mmio_cmdline(base, irq)
