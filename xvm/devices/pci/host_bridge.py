"""PCI bus 0 behind configuration mechanism #1 (PCI Local Bus 3.0 section 3.2.2.3.2).

Port 0xCF8 (CONFIG_ADDRESS, dword accesses only) latches
{enable bit 31, bus 23:16, device 15:11, function 10:8, register 7:2};
ports 0xCFC-0xCFF (CONFIG_DATA) then read or write that dword of the selected
function's configuration space, a byte or word at a time at 0xCFD-0xCFF.
With the enable bit clear, or for a function that does not exist, reads
float to all ones and writes are dropped, which is how Linux's bus scan tells
empty slots.

Linux without ACPI probes the mechanism in arch/x86/pci/direct.c
(pci_check_type1): it writes a byte to 0xCFB (ignored here, as on a PIIX the
address register only takes dwords), checks that 0x80000000 reads back from
0xCF8, then pci_sanity_check wants a host bridge or VGA class, or an Intel or
Compaq vendor ID, on bus 0. So slot 0 is a host bridge: an Intel 440FX PMC
(8086:1237), the one QEMU's `pc` machine shows; Linux knows it well and needs
nothing from it beyond its class code (the only quirk, quirk_natoma, just
logs a PCI-to-PCI transfer limit). Devices go in slots 1-31, function 0.

    bus = PciBus()
    bus.add(device)                     # next free slot
    pio.insert(bus.conf1, PORT_PCI_CONFIG_ADDRESS, 8)
"""

from __future__ import annotations

import threading
from typing import Optional

from xvm.devices.pci.config_space import PciConfigSpace

PCI_VENDOR_ID_INTEL = 0x8086
PCI_DEVICE_ID_INTEL_82441 = 0x1237  # 440FX - 82441FX PMC [Natoma]
PCI_CLASS_BRIDGE_HOST = 0x060000

PCI_SLOTS = 32
CONFIG_ADDRESS_ENABLE = 1 << 31


class PciFunction:
    """What the bus needs from a PCI function: its configuration space.

    Subclasses override config_write to react to their capabilities (MSI-X
    Message Control) after the generic masked write.
    """

    def __init__(self, config: PciConfigSpace) -> None:
        self.config = config

    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.config.write(offset, size, value)


class HostBridge(PciFunction):
    """Device 00.0: the i440FX host bridge, present only so Linux trusts mechanism #1."""

    def __init__(self) -> None:
        super().__init__(PciConfigSpace(PCI_VENDOR_ID_INTEL, PCI_DEVICE_ID_INTEL_82441, PCI_CLASS_BRIDGE_HOST,
                                        revision=2))


class PciBus:
    """Bus 0: up to 32 single-function devices, reached through `conf1`."""

    def __init__(self) -> None:
        self.slots: list = [None] * PCI_SLOTS
        self.slots[0] = HostBridge()
        self.conf1 = ConfigMechanism1(self)

    def add(self, function: PciFunction, slot: Optional[int] = None) -> int:
        """Put `function` in `slot` (default: the first free one); returns the slot."""
        if slot is None:
            free = [index for index in range(1, PCI_SLOTS) if self.slots[index] is None]
            if not free:
                raise ValueError("PCI bus 0 is full (31 devices)")
            slot = free[0]
        if not 0 < slot < PCI_SLOTS or self.slots[slot] is not None:
            raise ValueError(f"PCI slot {slot} is invalid or taken")
        self.slots[slot] = function
        return slot

    def function(self, bus: int, device: int, function: int) -> Optional[PciFunction]:
        if bus != 0 or function != 0:
            return None
        return self.slots[device]

    def devices(self) -> list:
        """(slot, function) of every occupied slot."""
        return [(slot, fn) for slot, fn in enumerate(self.slots) if fn is not None]


class ConfigMechanism1:
    """The PIO device at 0xCF8-0xCFF: CONFIG_ADDRESS and CONFIG_DATA."""

    def __init__(self, bus: PciBus) -> None:
        self.bus = bus
        self.address = 0

    def _target(self, data_offset: int) -> tuple:
        """(function or None, register offset) selected by CONFIG_ADDRESS for a data-port access."""
        address = self.address
        if not address & CONFIG_ADDRESS_ENABLE:
            return None, 0
        fn = self.bus.function(address >> 16 & 0xFF, address >> 11 & 0x1F, address >> 8 & 0x7)
        return fn, (address & 0xFC) + data_offset

    def read(self, offset: int, size: int) -> int:
        ones = (1 << (8 * size)) - 1
        if offset < 4:
            return self.address if offset == 0 and size == 4 else ones
        fn, register = self._target(offset - 4)
        if fn is None or register + size > 256:
            return ones
        return fn.config_read(register, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            if offset == 0 and size == 4:
                self.address = value & 0x80FFFFFC
            return
        fn, register = self._target(offset - 4)
        if fn is not None and register + size <= 256:
            fn.config_write(register, size, value)


class SharedIrqLine:
    """Several devices' INTx outputs wired to one interrupt input: the line is high while any is.

    PCI interrupts are level-triggered and shareable (PCI 3.0 2.2.6); the
    interrupt controller sees the OR of the devices on a line.
    """

    def __init__(self, line) -> None:
        self.line = line
        self._high: set = set()
        self._lock = threading.Lock()

    def pin(self) -> _SharedPin:
        """A new device's view of the line."""
        return _SharedPin(self)

    def _set(self, pin: object, high: bool) -> None:
        with self._lock:
            was = bool(self._high)
            if high:
                self._high.add(pin)
            else:
                self._high.discard(pin)
            now = bool(self._high)
            if now != was:
                self.line.set_level(now)


class _SharedPin:
    def __init__(self, shared: SharedIrqLine) -> None:
        self._shared = shared

    def set_level(self, high: bool) -> None:
        self._shared._set(self, high)
