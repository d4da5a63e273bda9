"""add_pci_and_virtio: the bus at 0xCF8, firmware-style BAR addresses, BARs on the MMIO bus once enabled."""

from __future__ import annotations

import pytest

from xvm.arch.x86 import layout
from xvm.bus import Bus
from xvm.bus.irq import MsiMessage, NullIrqLine
from xvm.config import MachineConfig
from xvm.devices.virtio.console import VirtioConsole
from xvm.devices.virtio.rng import VirtioRng
from xvm.errors import XvmError
from xvm.machine.pci_devices import BarAllocator, IrqfdMsiSink, add_pci_and_virtio, add_virtio_mmio
from xvm.memory.guest_memory import GuestMemory


class FakeVm:
    def __init__(self):
        self.lines = {}
        self.messages = []
        self.dma = []

    def irq_line(self, irq):
        return self.lines.setdefault(irq, NullIrqLine())

    def msi_sink(self):
        return self

    def signal_msi(self, message):
        self.messages.append(message)

    def memory_written(self, gpa, length):
        self.dma.append((gpa, length))


@pytest.fixture
def machine():
    memory = GuestMemory.allocate(16 << 20)
    yield memory, FakeVm(), Bus("pio"), Bus("mmio")
    memory.close()


def cfg_read(pio, slot, register, size=4):
    pio.write(layout.PORT_PCI_CONFIG_ADDRESS, 4, 0x8000_0000 | slot << 11 | register & 0xFC)
    return pio.read(layout.PORT_PCI_CONFIG_DATA + (register & 3), size)


def cfg_write(pio, slot, register, size, value):
    pio.write(layout.PORT_PCI_CONFIG_ADDRESS, 4, 0x8000_0000 | slot << 11 | register & 0xFC)
    pio.write(layout.PORT_PCI_CONFIG_DATA + (register & 3), size, value)


def test_rng_only_by_default(machine):
    memory, vm, pio, mmio = machine
    devices = add_pci_and_virtio(MachineConfig(), vm, pio, mmio, memory, lambda data: None)
    assert [type(d) for d in devices] == [VirtioRng]
    assert cfg_read(pio, 0, 0) == 0x1237_8086
    assert cfg_read(pio, 1, 0) == 0x1044_1AF4
    assert cfg_read(pio, 2, 0) == 0xFFFF_FFFF
    assert cfg_read(pio, 1, 0x3C, 1) == layout.PCI_INTX_IRQS[0]
    bar0 = cfg_read(pio, 1, 0x10)
    bar2 = cfg_read(pio, 1, 0x18) & ~0xF
    assert layout.PCI_MMIO_START <= bar0 < layout.PCI_MMIO_START + layout.PCI_MMIO_SIZE
    assert bar2 % 0x4000 == 0 and cfg_read(pio, 1, 0x1C) == 0
    assert mmio.lookup(bar2) is None  # not decoded until the guest enables memory space
    cfg_write(pio, 1, 0x04, 2, 0x6)
    device, offset = mmio.lookup(bar2 + 0x12)
    assert offset == 0x12 and mmio.read(bar2 + 0x12, 2) == 1  # num_queues through the bus
    cfg_write(pio, 1, 0x04, 2, 0)
    assert mmio.lookup(bar2) is None


def test_console_when_asked(machine):
    memory, vm, pio, mmio = machine

    class Config:  # MachineConfig with the virtio_console flag the lead adds
        disks = ()
        nets = ()
        virtio_console = True

    out = []
    devices = add_pci_and_virtio(Config(), vm, pio, mmio, memory, out.append)
    assert isinstance(devices[1], VirtioConsole)
    assert cfg_read(pio, 2, 0) == 0x1043_1AF4
    assert cfg_read(pio, 2, 0x3C, 1) == layout.PCI_INTX_IRQS[1]
    devices[1].output(b"x")
    assert out == [b"x"]


def test_bar_allocator_aligns_and_runs_out():
    bars = BarAllocator(0x1000, 0x10000)
    assert bars.allocate(0x4000) == 0x4000
    assert bars.allocate(0x1000) == 0x8000
    with pytest.raises(Exception, match="PCI MMIO window"):
        bars.allocate(0x10000)


def test_virtio_mmio_placement(machine):
    memory, vm, _, mmio = machine
    word = add_virtio_mmio(VirtioRng(memory), vm, mmio, 0)
    assert word == f"virtio_mmio.device=4K@{layout.VIRTIO_MMIO_START:#x}:{layout.VIRTIO_MMIO_IRQ_BASE}"
    assert mmio.read(layout.VIRTIO_MMIO_START, 4) == 0x74726976


def test_disk_gets_a_virtio_blk_function(machine, tmp_path):
    from xvm.config import DiskConfig

    memory, vm, pio, mmio = machine
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    devices = add_pci_and_virtio(MachineConfig(disks=(DiskConfig(image),)), vm, pio, mmio, memory, lambda d: None)
    try:
        assert type(devices[1]).__name__ == "BlockDevice"
        assert cfg_read(pio, 2, 0) == 0x1042_1AF4
        assert cfg_read(pio, 2, 0x08) >> 8 == 0x010000  # mass storage (what lspci shows)
    finally:
        for device in devices:
            device.close()


class IoeventfdVm(FakeVm):
    """A VmBackend with KVM_IOEVENTFD: records registrations; the test plays KVM and writes the eventfd."""

    def __init__(self, refuse=False):
        super().__init__()
        self.ioeventfds = {}
        self.refuse = refuse

    def register_ioeventfd(self, fd, address, length, pio=False, datamatch=None):
        if self.refuse:
            from xvm.errors import KvmError

            raise KvmError("KVM_IOEVENTFD failed")
        self.ioeventfds[address] = (fd, length)

    def unregister_ioeventfd(self, fd, address, length, pio=False, datamatch=None):
        assert self.ioeventfds.pop(address) == (fd, length)


def test_kicks_through_ioeventfds_follow_the_bar(machine):
    import os
    import threading

    memory, _, pio, mmio = machine
    vm = IoeventfdVm()
    devices = add_pci_and_virtio(MachineConfig(), vm, pio, mmio, memory, lambda d: None)
    rng = devices[0]
    kicked = threading.Event()
    rng.activated = True
    rng.queue_notify = lambda index: kicked.set()
    try:
        bar2 = cfg_read(pio, 1, 0x18) & ~0xF
        assert vm.ioeventfds == {}
        cfg_write(pio, 1, 0x04, 2, 0x6)  # memory decoding on: the notify address becomes an ioeventfd
        fd, length = vm.ioeventfds[bar2 + 0x3000]
        assert length == 2
        os.write(fd, (1).to_bytes(8, "little"))
        assert kicked.wait(5)
        cfg_write(pio, 1, 0x18, 4, bar2 + 0x100000)  # the guest moves the BAR
        assert list(vm.ioeventfds) == [bar2 + 0x100000 + 0x3000]
    finally:
        devices.close()
    assert vm.ioeventfds == {}


def test_kicks_stay_mmio_exits_when_kvm_refuses(machine):
    memory, _, pio, mmio = machine
    vm = IoeventfdVm(refuse=True)
    devices = add_pci_and_virtio(MachineConfig(), vm, pio, mmio, memory, lambda d: None)
    try:
        cfg_write(pio, 1, 0x04, 2, 0x6)
        bar2 = cfg_read(pio, 1, 0x18) & ~0xF
        assert mmio.lookup(bar2 + 0x3000) is not None
    finally:
        devices.close()


class IrqfdVm(FakeVm):
    """A FakeVm with kvm's GSI routing and irqfds."""

    def __init__(self, refuse=False):
        super().__init__()
        self.refuse = refuse
        self.tables = []
        self.irqfds = {}

    def set_msi_routes(self, routes):
        if self.refuse:
            raise XvmError("Invalid argument")
        self.tables.append(dict(routes))

    def register_irqfd(self, fd, gsi, resamplefd=-1):
        self.irqfds[gsi] = fd

    def unregister_irqfd(self, fd, gsi):
        assert self.irqfds.pop(gsi) == fd


def _eventfd_count(fd):
    import os

    return int.from_bytes(os.read(fd, 8), "little")


def test_each_msi_message_gets_a_route_and_an_irqfd():
    vm = IrqfdVm()
    sink = IrqfdMsiSink(vm, vm)
    first, second = MsiMessage(layout.LAPIC_START, 0x41), MsiMessage(layout.LAPIC_START, 0x42)
    sink.signal_msi(first)
    sink.signal_msi(first)
    sink.signal_msi(second)
    assert vm.tables == [{24: first}, {24: first, 25: second}]  # one table update per new message
    assert _eventfd_count(vm.irqfds[24]) == 2 and _eventfd_count(vm.irqfds[25]) == 1
    assert vm.messages == []  # nothing went through KVM_SIGNAL_MSI
    sink.close()
    assert vm.irqfds == {}


def test_msi_falls_back_to_signal_msi_when_kvm_refuses_routes():
    vm = IrqfdVm(refuse=True)
    sink = IrqfdMsiSink(vm, vm)
    message = MsiMessage(layout.LAPIC_START, 0x41)
    sink.signal_msi(message)
    sink.signal_msi(message)
    assert vm.messages == [message, message] and vm.irqfds == {}


def test_msi_routes_are_bounded():
    vm = IrqfdVm()
    sink = IrqfdMsiSink(vm, vm)
    for data in range(IrqfdMsiSink.MAX_MSI_ROUTES + 2):
        sink.signal_msi(MsiMessage(layout.LAPIC_START, data))
    assert len(vm.irqfds) == IrqfdMsiSink.MAX_MSI_ROUTES and len(vm.messages) == 2
    sink.close()


def test_virtio_msix_goes_through_the_irqfd_sink_on_kvm(machine):
    memory, _, pio, mmio = machine
    vm = IrqfdVm()
    devices = add_pci_and_virtio(MachineConfig(), vm, pio, mmio, memory, lambda d: None)
    try:
        assert isinstance(devices.msi, IrqfdMsiSink)
        transport = mmio_transport(pio, mmio)
        msix = transport.msix
        msix.table_write(0, 4, layout.LAPIC_START)
        msix.table_write(8, 4, 0x51)
        msix.table_write(12, 4, 0)  # unmask vector 0
        msix.write_message_control(0x8000)
        transport.config_vector = 0
        transport.signal_config()
        assert vm.tables == [{24: MsiMessage(layout.LAPIC_START, 0x51)}] and _eventfd_count(vm.irqfds[24]) == 1
    finally:
        devices.close()
    assert vm.irqfds == {}


def mmio_transport(pio, mmio):
    """The virtio-pci transport of slot 1, with its BARs decoded."""
    cfg_write(pio, 1, 0x04, 2, 0x6)
    return mmio.lookup(cfg_read(pio, 1, 0x18) & ~0xF)[0]
