"""PCI configuration space, conf1 decoding, BAR sizing and mapping, capability walk, MSI-X."""

from __future__ import annotations

import struct

import pytest

from xvm.bus.irq import MsiMessage
from xvm.devices.pci.config_space import (
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_COMMAND_MEMORY,
    PCI_INTERRUPT_LINE,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PciConfigSpace,
)
from xvm.devices.pci.host_bridge import PciBus, PciFunction, SharedIrqLine
from xvm.devices.pci.msix import PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL, Msix


class FakeMapper:
    def __init__(self, taken=()):
        self.maps = {}
        self.taken = set(taken)

    def map(self, base, length, device):
        if base in self.taken:
            return False
        self.maps[base] = (length, device)
        return True

    def unmap(self, base):
        del self.maps[base]


class Handler:
    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        pass


class Sink:
    def __init__(self):
        self.messages = []

    def signal_msi(self, message):
        self.messages.append(message)


def conf1_read(bus, devfn_slot, register, size):
    bus.conf1.write(0, 4, 0x8000_0000 | devfn_slot << 11 | register & 0xFC)
    return bus.conf1.read(4 + (register & 3), size)


def conf1_write(bus, slot, register, size, value):
    bus.conf1.write(0, 4, 0x8000_0000 | slot << 11 | register & 0xFC)
    bus.conf1.write(4 + (register & 3), size, value)


def make_space():
    return PciConfigSpace(0x1AF4, 0x1044, 0x00FF00, revision=1, interrupt_pin=1)


# --- conf1 -----------------------------------------------------------------------------------
def test_conf1_address_register_and_linux_probe():
    bus = PciBus()
    # arch/x86/pci/direct.c pci_check_type1: a byte to 0xCFB is ignored, the dword reads back.
    bus.conf1.write(3, 1, 0x01)
    bus.conf1.write(0, 4, 0x8000_0000)
    assert bus.conf1.read(0, 4) == 0x8000_0000
    bus.conf1.write(0, 4, 0xFFFF_FFFF)
    assert bus.conf1.read(0, 4) == 0x80FF_FFFC  # reserved bits 30:24 and 1:0 read as zero


def test_host_bridge_identity():
    bus = PciBus()
    assert conf1_read(bus, 0, 0, 4) == 0x1237_8086
    assert conf1_read(bus, 0, 0x0A, 2) == 0x0600  # PCI_CLASS_BRIDGE_HOST (pci_sanity_check)


def test_conf1_byte_and_word_offsets():
    bus = PciBus()
    assert conf1_read(bus, 0, 0x01, 1) == 0x80
    assert conf1_read(bus, 0, 0x02, 2) == 0x1237
    assert conf1_read(bus, 0, 0x03, 1) == 0x12


def test_conf1_absent_and_disabled():
    bus = PciBus()
    assert conf1_read(bus, 5, 0, 4) == 0xFFFF_FFFF  # empty slot
    bus.conf1.write(0, 4, 0x8000_0100)  # function 1 of slot 0
    assert bus.conf1.read(4, 4) == 0xFFFF_FFFF
    bus.conf1.write(0, 4, 0x8001_0000)  # bus 1
    assert bus.conf1.read(4, 2) == 0xFFFF
    bus.conf1.write(0, 4, 0x0000_0000)  # enable bit clear
    assert bus.conf1.read(4, 4) == 0xFFFF_FFFF
    bus.conf1.write(4, 4, 0)  # dropped


def test_bus_add_slots():
    bus = PciBus()
    fn = PciFunction(make_space())
    assert bus.add(fn) == 1
    assert bus.add(PciFunction(make_space())) == 2
    with pytest.raises(ValueError):
        bus.add(fn, slot=1)
    assert conf1_read(bus, 1, 0, 4) == 0x1044_1AF4


# --- header and BARs ----------------------------------------------------------------------------
def test_read_only_fields():
    cs = make_space()
    cs.write(0, 4, 0xFFFF_FFFF)
    assert cs.read(0, 4) == 0x1044_1AF4
    cs.write(PCI_INTERRUPT_LINE, 1, 10)
    assert cs.read(PCI_INTERRUPT_LINE, 2) == 0x010A  # line writable, pin fixed
    assert cs.read(0x100, 4) == 0xFFFF_FFFF


def test_bar_sizing_32bit():
    cs = make_space()
    cs.add_bar(0, 0x1000, Handler())
    cs.write(PCI_BASE_ADDRESS_0, 4, 0xFFFF_FFFF)
    assert cs.read(PCI_BASE_ADDRESS_0, 4) == 0xFFFF_F000
    cs.write(PCI_BASE_ADDRESS_0, 4, 0xE000_0123)
    assert cs.read(PCI_BASE_ADDRESS_0, 4) == 0xE000_0000


def test_bar_sizing_64bit():
    cs = make_space()
    cs.add_bar(2, 0x4000, Handler(), is64=True, prefetchable=True)
    bar = PCI_BASE_ADDRESS_0 + 8
    assert cs.read(bar, 4) == 0xC  # 64-bit, prefetchable
    cs.write(bar, 4, 0xFFFF_FFFF)
    cs.write(bar + 4, 4, 0xFFFF_FFFF)
    assert cs.read(bar, 4) == 0xFFFF_C00C
    assert cs.read(bar + 4, 4) == 0xFFFF_FFFF
    cs.write(bar, 4, 0xE000_0000)
    cs.write(bar + 4, 4, 0x1)
    assert cs.bar_address(2) == 0x1_E000_0000


def test_unimplemented_bar_reads_zero():
    cs = make_space()
    cs.write(PCI_BASE_ADDRESS_0 + 20, 4, 0xFFFF_FFFF)
    assert cs.read(PCI_BASE_ADDRESS_0 + 20, 4) == 0


def test_bar_overlapping_64bit_register_rejected():
    cs = make_space()
    cs.add_bar(2, 0x1000, Handler(), is64=True)
    with pytest.raises(ValueError):
        cs.add_bar(3, 0x1000, Handler())
    with pytest.raises(ValueError):
        cs.add_bar(5, 0x1000, Handler(), is64=True)
    with pytest.raises(ValueError):
        cs.add_bar(0, 0x1001, Handler())


def test_bar_mapping_follows_command_and_moves():
    cs = make_space()
    handler = Handler()
    cs.add_bar(0, 0x1000, handler)
    cs.mapper = mapper = FakeMapper()
    cs.set_bar_address(0, 0xE000_0000)
    assert mapper.maps == {}  # memory decoding is off
    cs.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY)
    assert mapper.maps == {0xE000_0000: (0x1000, handler)}
    cs.write(PCI_BASE_ADDRESS_0, 4, 0xE010_0000)  # the guest moves it
    assert list(mapper.maps) == [0xE010_0000]
    cs.write(PCI_BASE_ADDRESS_0, 4, 0xFFFF_FFFF)  # sizing with decoding on: placed at the top
    assert list(mapper.maps) == [0xFFFF_F000]
    cs.write(PCI_BASE_ADDRESS_0, 4, 0)  # unassigned: not decoded
    assert mapper.maps == {}
    cs.write(PCI_BASE_ADDRESS_0, 4, 0xE000_0000)
    cs.write(PCI_COMMAND, 2, 0)
    assert mapper.maps == {}


def test_bar_over_another_device_is_not_decoded():
    cs = make_space()
    cs.add_bar(0, 0x1000, Handler())
    cs.mapper = mapper = FakeMapper(taken={0xFEC0_0000})
    cs.set_bar_address(0, 0xFEC0_0000)
    cs.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY)
    assert mapper.maps == {}
    cs.write(PCI_BASE_ADDRESS_0, 4, 0xE000_0000)
    assert list(mapper.maps) == [0xE000_0000]


def test_capability_walk():
    cs = make_space()
    assert not cs.read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST
    first = cs.add_capability(PCI_CAP_ID_MSIX, b"\0" * 10)
    second = cs.add_capability(PCI_CAP_ID_VNDR, bytes([16, 1]) + b"\0" * 12, writable=b"\0\xff")
    assert cs.read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST
    found = []
    pointer = cs.read(PCI_CAPABILITY_LIST, 1)
    while pointer:
        assert pointer % 4 == 0 and pointer >= 0x40
        found.append((pointer, cs.read(pointer, 1)))
        pointer = cs.read(pointer + 1, 1)
    assert found == [(first, PCI_CAP_ID_MSIX), (second, PCI_CAP_ID_VNDR)]
    cs.write(second, 4, 0xFFFF_FFFF)  # id, next and cap_len are read-only; byte 3 is writable here
    assert cs.read(second, 4) == 0xFF10_0009


# --- MSI-X --------------------------------------------------------------------------------------
def program(msix, vector, address, data, masked=False):
    offset = 16 * vector
    msix.table_write(offset, 4, address & 0xFFFF_FFFF)
    msix.table_write(offset + 4, 4, address >> 32)
    msix.table_write(offset + 8, 4, data)
    msix.table_write(offset + 12, 4, int(masked))


def test_msix_vectors_start_masked_and_disabled():
    msix = Msix(3, Sink())
    assert all(msix.table_read(16 * v + 12, 4) == 1 for v in range(3))
    assert not msix.notify(0)  # MSI-X not enabled: the caller falls back to INTx


def test_msix_delivery_and_pending_on_unmask():
    sink = Sink()
    msix = Msix(3, sink)
    msix.write_message_control(PCI_MSIX_FLAGS_ENABLE)
    msix.table_write(8, 4, 0x41)
    assert msix.notify(0)  # masked: becomes pending
    assert sink.messages == [] and msix.pba_read(0, 8) == 1
    program(msix, 0, 0xFEE0_0000, 0x41)  # unmask
    assert sink.messages == [MsiMessage(0xFEE0_0000, 0x41)]
    assert msix.pba_read(0, 8) == 0
    assert msix.notify(0)
    assert len(sink.messages) == 2


def test_msix_function_mask():
    sink = Sink()
    msix = Msix(2, sink)
    program(msix, 1, 0xFEE0_1000, 0x55)
    msix.write_message_control(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
    msix.notify(1)
    assert sink.messages == [] and msix.pba_read(0, 1) == 2
    msix.write_message_control(PCI_MSIX_FLAGS_ENABLE)
    assert sink.messages == [MsiMessage(0xFEE0_1000, 0x55)]


def test_msix_bad_vector_and_bounds():
    msix = Msix(2, Sink())
    msix.write_message_control(PCI_MSIX_FLAGS_ENABLE)
    assert not msix.notify(2)
    assert not msix.notify(-1)
    assert msix.table_read(32, 4) == 0
    msix.table_write(32, 4, 1)
    assert msix.pba_read(8, 4) == 0


def test_msix_capability_body():
    msix = Msix(3, Sink())
    control, table, pba = struct.unpack("<HII", msix.capability_body(bar=0, table_offset=0, pba_offset=0x800))
    assert (control, table, pba) == (2, 0, 0x800)
    assert msix.capability_writable() == b"\x00\xc0"


# --- shared INTx ------------------------------------------------------------------------------------
def test_shared_irq_line_is_the_or_of_its_pins(irq):
    shared = SharedIrqLine(irq)
    a, b = shared.pin(), shared.pin()
    a.set_level(True)
    b.set_level(True)
    a.set_level(False)
    assert irq.level and irq.raised == 1
    b.set_level(False)
    assert not irq.level
