"""Local APIC and IOAPIC against fakes (SDM vol. 3A ch. 11, 82093AA datasheet)."""

from __future__ import annotations

import pytest

from xvm.devices.clock import VirtualClock
from xvm.devices.legacy.ioapic import IoApic
from xvm.devices.legacy.lapic import (
    APIC_DM_EXTINT,
    APIC_DM_INIT,
    APIC_DM_NMI,
    APIC_DM_STARTUP,
    ApicMessage,
    Lapic,
)


class Harness:
    def __init__(self, bsp=True):
        self.clock = VirtualClock(0)
        self.ipis = []
        self.eois = []
        self.apic = Lapic(0, self.clock, lambda src, m: self.ipis.append((src, m)), self.eois.append, bsp=bsp)

    def w(self, reg, value):
        self.apic.write(reg, 4, value)

    def r(self, reg):
        return self.apic.read(reg, 4)

    def enable(self):
        self.w(0x0F0, 0x1FF)


@pytest.fixture
def h():
    return Harness()


def test_reset_values(h):
    assert h.r(0x020) == 0
    assert h.r(0x030) == 0x00050014
    assert h.r(0x0F0) == 0xFF
    assert h.r(0x0E0) == 0xFFFFFFFF
    assert h.r(0x320) & 0x10000
    assert h.r(0x350) == 0x700  # BSP LINT0: ExtINT, unmasked (virtual wire)
    assert h.apic.accepts_pic_interrupt()
    assert not Harness(bsp=False).apic.accepts_pic_interrupt()
    assert h.apic.apic_base == 0xFEE00900


def test_disabled_apic_ignores_fixed_and_masks_lvts(h):
    h.apic.accept(ApicMessage(vector=0x40))
    assert not h.apic.has_interrupt()
    h.w(0x320, 0x30)  # unmask attempt while disabled
    assert h.r(0x320) & 0x10000
    h.enable()
    h.w(0x320, 0x30)
    assert not h.r(0x320) & 0x10000
    h.w(0x0F0, 0xFF)  # software disable masks every LVT
    assert h.r(0x320) & 0x10000 and h.r(0x350) & 0x10000


def test_accept_ack_eoi_and_priorities(h):
    h.enable()
    h.apic.accept(ApicMessage(vector=0x41))
    h.apic.accept(ApicMessage(vector=0x62))
    assert h.r(0x200 + 0x20) == (1 << 1)  # IRR bits 64-95 hold 0x41
    assert h.apic.has_interrupt()
    assert h.apic.acknowledge() == 0x62
    assert h.r(0x0A0) == 0x60  # PPR follows the class in service
    assert not h.apic.has_interrupt()  # 0x41 is a lower class
    h.w(0x0B0, 0)  # EOI
    assert h.r(0x0A0) == 0
    h.w(0x080, 0x50)  # TPR masks classes <= 5
    assert not h.apic.has_interrupt()
    assert h.apic.acknowledge() == 0xFF  # spurious
    h.w(0x080, 0x30)
    assert h.apic.acknowledge() == 0x41
    assert h.r(0x100 + 0x20) == (1 << 1)
    h.w(0x0B0, 0)
    assert h.eois == []  # edge-triggered: no EOI broadcast


def test_level_eoi_is_broadcast(h):
    h.enable()
    h.apic.accept(ApicMessage(vector=0x55, level_triggered=True))
    assert h.r(0x180 + 0x20) == 1 << 0x15
    assert h.apic.acknowledge() == 0x55
    h.w(0x0B0, 0)
    assert h.eois == [0x55]


def test_illegal_vector_sets_esr(h):
    h.enable()
    h.apic.accept(ApicMessage(vector=3))
    assert not h.apic.has_interrupt()
    h.w(0x280, 0)
    assert h.r(0x280) == 0x40
    h.w(0x300, 0x00000005)  # send vector 5: illegal
    h.w(0x280, 0)
    assert h.r(0x280) == 0x20
    assert h.ipis == []
    h.r(0x400)  # no such register
    h.w(0x280, 0)
    assert h.r(0x280) == 0x80


def test_icr_sends_ipis(h):
    h.enable()
    h.w(0x310, 0x03000000)
    h.w(0x300, 0x000000F0)
    assert h.ipis[-1] == (0, ApicMessage(vector=0xF0, destination=3))
    h.w(0x300, 0x000C4500)  # INIT, assert, all excluding self
    m = h.ipis[-1][1]
    assert m.delivery_mode == APIC_DM_INIT and m.shorthand == 3
    h.w(0x300, 0x00008500)  # INIT level de-assert: not sent
    assert h.ipis[-1][1] is m
    h.w(0x300, 0x000C4608)  # SIPI vector 8
    assert h.ipis[-1][1].delivery_mode == APIC_DM_STARTUP
    assert not h.r(0x300) & 0x1000  # delivery status idle


def test_nmi_init_sipi_extint_are_latched(h):
    h.apic.accept(ApicMessage(vector=0, delivery_mode=APIC_DM_NMI))
    h.apic.accept(ApicMessage(vector=0, delivery_mode=APIC_DM_INIT))
    h.apic.accept(ApicMessage(vector=0x9A, delivery_mode=APIC_DM_STARTUP))
    h.apic.accept(ApicMessage(vector=0, delivery_mode=APIC_DM_EXTINT))
    assert h.apic.take_nmi() and not h.apic.take_nmi()
    assert h.apic.take_init()
    assert h.apic.take_sipi() == 0x9A and h.apic.take_sipi() is None
    assert h.apic.extint_pending


def test_logical_destinations(h):
    h.w(0x0D0, 0x02000000)
    assert h.apic.matches(0x02, True) and h.apic.matches(0x03, True)
    assert not h.apic.matches(0x04, True)
    h.w(0x0E0, 0x0FFFFFFF)  # cluster model
    h.w(0x0D0, 0x31000000)
    assert h.apic.matches(0x31, True) and not h.apic.matches(0x21, True)
    assert h.apic.matches(0x00, False) and h.apic.matches(0xFF, False)
    assert not h.apic.matches(0x01, False)


def test_timer_oneshot(h):
    h.enable()
    h.w(0x3E0, 0x3)  # divide by 16
    h.w(0x320, 0x00000040)  # one-shot, vector 0x40
    h.w(0x380, 1000)
    assert h.apic.next_deadline() == 16000
    h.clock.advance(8000)
    assert h.r(0x390) == 500
    h.apic.tick(15999)
    assert not h.apic.has_interrupt()
    h.apic.tick(16000)
    assert h.apic.acknowledge() == 0x40
    assert h.apic.next_deadline() is None
    h.clock.advance(100000)
    h.apic.tick(h.clock.now_ns())
    assert not h.apic.has_interrupt()
    assert h.r(0x390) == 0 and h.r(0x380) == 1000


def test_timer_periodic_and_divide_1(h):
    h.enable()
    h.w(0x3E0, 0xB)  # divide by 1
    h.w(0x320, 0x00020041)
    h.w(0x380, 100)
    assert h.apic.next_deadline() == 100
    h.apic.tick(250)
    assert h.apic.acknowledge() == 0x41
    h.w(0x0B0, 0)
    assert h.apic.next_deadline() == 300
    h.clock.advance_to(250)
    assert h.r(0x390) == 50
    h.w(0x320, 0x00030041)  # masked: counting goes on, no deadline
    assert h.apic.next_deadline() is None
    h.w(0x380, 0)  # stop
    h.w(0x320, 0x00020041)
    assert h.apic.next_deadline() is None


def test_mmio_access_rules(h):
    h.w(0x080, 0x12345678)
    assert h.r(0x080) == 0x78
    h.apic.write(0x080, 1, 0x99)  # byte stores are ignored
    assert h.r(0x080) == 0x78
    h.w(0x020, 0x05000000)
    assert h.apic.read(0x023, 1) == 0x05
    assert h.apic.read(0x024, 4) == 0
    h.w(0x390, 1234)  # read-only current count
    assert h.r(0x390) == 0


# --- IOAPIC ---------------------------------------------------------------------------


class IoHarness:
    def __init__(self):
        self.sent = []
        self.io = IoApic(self.sent.append)

    def reg(self, index, value=None):
        self.io.write(0x00, 4, index)
        if value is None:
            return self.io.read(0x10, 4)
        self.io.write(0x10, 4, value)
        return None


@pytest.fixture
def io():
    return IoHarness()


def test_ioapic_identity_registers(io):
    assert io.reg(0x01) == 0x00170011
    io.reg(0x00, 0x0A000000)
    assert io.reg(0x00) == 0x0A000000
    assert io.reg(0x10) == 0x00010000  # masked after reset
    assert io.reg(0x03) == 0xFFFFFFFF
    assert io.reg(0x40) == 0xFFFFFFFF  # pin 24 does not exist
    io.reg(0x40, 0)
    io.reg(0x01, 0)
    assert io.reg(0x01) == 0x00170011


def test_ioapic_edge_delivery(io):
    io.io.set_irq(4, True)  # masked: lost
    io.io.set_irq(4, False)
    io.reg(0x18, 0x00000034)
    io.reg(0x19, 0x01000000)
    assert io.sent == []
    io.io.set_irq(4, True)
    io.io.set_irq(4, True)  # no new edge
    assert io.sent == [ApicMessage(vector=0x34, destination=1)]
    io.io.set_irq(4, False)
    io.io.set_irq(4, True)
    assert len(io.sent) == 2


def test_ioapic_level_remote_irr_and_eoi(io):
    io.reg(0x10 + 2 * 10, 0x0000A000 | 0x0800 | 0x50)  # level, active low, logical, vector 0x50
    io.io.set_irq(10, True)
    msg = io.sent[-1]
    assert msg == ApicMessage(vector=0x50, logical=True, level_triggered=True)
    assert io.reg(0x10 + 2 * 10) & 0x4000  # remote IRR
    io.reg(0x10 + 2 * 10, 0x0000A850)  # rewriting keeps the read-only remote IRR
    assert io.reg(0x10 + 2 * 10) & 0x4000
    assert len(io.sent) == 1
    io.io.eoi(0x50)  # line still asserted: delivered again
    assert len(io.sent) == 2
    io.io.set_irq(10, False)
    io.io.eoi(0x50)
    assert len(io.sent) == 2
    assert not io.reg(0x10 + 2 * 10) & 0x4000


def test_ioapic_unmask_delivers_pending_level(io):
    io.reg(0x10 + 2 * 5, 0x00018060)  # level, masked
    io.io.set_irq(5, True)
    assert io.sent == []
    io.reg(0x10 + 2 * 5, 0x00008060)
    assert io.sent == [ApicMessage(vector=0x60, level_triggered=True)]


def test_ioapic_out_of_range_pin(io):
    io.io.set_irq(24, True)
    io.io.set_irq(-1, True)
    assert io.sent == []
    assert io.io.read(0x08, 4) == 0xFFFFFFFF
