"""Wire PCI bus 0 and the virtio devices a MachineConfig asks for into a machine.

The builder calls `add_pci_and_virtio` once the interrupt controllers exist
(on bt the MSI sink and IRQ lines come from them). It puts configuration
mechanism #1 at 0xCF8, assigns every BAR an address in the 32-bit PCI window
the way firmware would (Linux keeps firmware assignments it can claim), and
maps BARs on the MMIO bus only while the guest lets the device decode memory.

Devices: virtio-rng always; virtio-console when the config asks for it;
one virtio-blk per --disk and one virtio-net per --net (from block.py and
net.py, imported only when wanted).

virtio-mmio devices are not discovered by a bus scan: `add_virtio_mmio`
places one and returns the `virtio_mmio.device=` word its kernel needs.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from xvm.arch.x86 import layout
from xvm.bus import Bus
from xvm.bus.bus import BusError
from xvm.config import MachineConfig
from xvm.devices.pci.host_bridge import PciBus, SharedIrqLine
from xvm.devices.virtio.console import VirtioConsole
from xvm.devices.virtio.device import VirtioDevice
from xvm.devices.virtio.rng import VirtioRng
from xvm.devices.virtio.transport_mmio import VirtioMmioTransport, virtio_mmio_cmdline
from xvm.devices.virtio.transport_pci import VirtioPciTransport
from xvm.engines.base import VmBackend
from xvm.errors import ConfigError
from xvm.memory import GuestMemory

log = logging.getLogger(__name__)


class MmioBarMapper:
    """BarMapper over the MMIO bus: BARs come and go as the guest programs them."""

    def __init__(self, mmio: Bus) -> None:
        self.mmio = mmio

    def map(self, base: int, length: int, device: object) -> bool:
        try:
            self.mmio.insert(device, base, length)
        except BusError as error:
            log.warning("PCI BAR at %#x+%#x not decoded: %s", base, length, error)
            return False
        return True

    def unmap(self, base: int) -> None:
        self.mmio.remove(base)


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


def add_pci_and_virtio(config: MachineConfig, vm: VmBackend, pio: Bus, mmio: Bus, memory: GuestMemory,
                       console_out: Callable[[bytes], None]) -> list:
    """Build PCI bus 0 with the virtio devices `config` asks for; returns the VirtioDevices.

    The machine calls `close()` on each at shutdown; a VirtioConsole in the
    list takes host input through `receive()`.
    """
    devices: list = [VirtioRng(memory)]
    if getattr(config, "virtio_console", False):
        devices.append(VirtioConsole(memory, console_out))
    if config.disks:
        from xvm.devices.virtio.block import BlockDevice

        devices.extend(BlockDevice(memory, disk) for disk in config.disks)
    if config.nets:
        from xvm.devices.virtio.net import NetDevice

        devices.extend(NetDevice(memory, net) for net in config.nets)

    bus = PciBus()
    pio.insert(bus.conf1, layout.PORT_PCI_CONFIG_ADDRESS, 8)
    mapper = MmioBarMapper(mmio)
    bars = BarAllocator()
    msi_sink = vm.msi_sink()
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
