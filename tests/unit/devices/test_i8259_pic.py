"""The 8259A pair as Linux's init_8259A and the bt engine use it."""

from __future__ import annotations

import pytest

from xvm.devices.legacy.i8259_pic import I8259Pair


def linux_init(pic, auto_eoi=False):
    """arch/x86/kernel/i8259.c init_8259A()."""
    m, s = pic.master, pic.slave
    m.write(1, 1, 0xFF)
    s.write(1, 1, 0xFF)
    m.write(0, 1, 0x11)  # ICW1: edge, cascade, ICW4
    m.write(1, 1, 0x30)  # ICW2: vectors 0x30-0x37
    m.write(1, 1, 0x04)  # ICW3: slave on IR2
    m.write(1, 1, 0x03 if auto_eoi else 0x01)
    s.write(0, 1, 0x11)
    s.write(1, 1, 0x38)
    s.write(1, 1, 0x02)
    s.write(1, 1, 0x01)
    m.write(1, 1, 0x00)
    s.write(1, 1, 0x00)


@pytest.fixture
def pic(irq):
    p = I8259Pair(irq)
    linux_init(p)
    return p


def pulse(pic, n):
    pic.set_irq(n, True)
    pic.set_irq(n, False)


def test_probe_reads_back_imr(irq):
    p = I8259Pair(irq)
    p.master.write(1, 1, 0xFB)
    assert p.master.read(1, 1) == 0xFB


def test_edge_irq_delivery_and_eoi(pic, irq):
    assert not pic.has_interrupt() and not irq.level
    pulse(pic, 4)
    assert irq.level and pic.has_interrupt()
    assert pic.acknowledge() == 0x34
    assert not irq.level
    assert pic.master.isr == 0x10
    pulse(pic, 4)
    assert not pic.has_interrupt()  # same priority in service
    pic.master.write(0, 1, 0x20)  # non-specific EOI
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x34


def test_priority_and_nesting(pic):
    pulse(pic, 3)
    pulse(pic, 1)
    assert pic.acknowledge() == 0x31
    pulse(pic, 0)
    assert pic.has_interrupt()  # IRQ0 beats IRQ1 in service
    assert pic.acknowledge() == 0x30
    assert not pic.has_interrupt()
    pic.master.write(0, 1, 0x20)  # EOI clears IRQ0 (highest in service)
    assert pic.master.isr == 0x02
    pic.master.write(0, 1, 0x20)
    assert pic.acknowledge() == 0x33


def test_slave_cascade(pic, irq):
    pulse(pic, 8)
    assert irq.level
    assert pic.acknowledge() == 0x38
    assert pic.master.isr == 0x04 and pic.slave.isr == 0x01
    pic.slave.write(0, 1, 0x20)
    pic.master.write(0, 1, 0x20)
    assert pic.master.isr == 0 and pic.slave.isr == 0
    pulse(pic, 14)
    assert pic.acknowledge() == 0x3E


def test_mask_and_read_irr_isr(pic):
    pic.master.write(1, 1, 0x10)
    pulse(pic, 4)
    assert not pic.has_interrupt()
    pic.master.write(0, 1, 0x0A)  # OCW3: read IRR
    assert pic.master.read(0, 1) == 0x10
    pic.master.write(1, 1, 0x00)
    assert pic.acknowledge() == 0x34
    pic.master.write(0, 1, 0x0B)  # OCW3: read ISR
    assert pic.master.read(0, 1) == 0x10
    pic.master.write(0, 1, 0x64)  # specific EOI for IR4
    assert pic.master.read(0, 1) == 0


def test_spurious_irq7_and_15(pic):
    assert pic.acknowledge() == 0x37  # nothing pending
    pic.set_irq(9, True)
    pic.slave.write(1, 1, 0x02)  # masked on the slave after the master saw the edge
    assert pic.acknowledge() == 0x3F
    assert pic.slave.isr == 0


def test_auto_eoi(irq):
    p = I8259Pair(irq)
    linux_init(p, auto_eoi=True)
    pulse(p, 5)
    assert p.acknowledge() == 0x35
    assert p.master.isr == 0
    pulse(p, 5)
    assert p.has_interrupt()


def test_rotation(pic):
    pic.master.write(0, 1, 0xC4)  # set priority: IR4 lowest, IR5 highest
    pulse(pic, 1)
    pulse(pic, 6)
    assert pic.acknowledge() == 0x36
    pic.master.write(0, 1, 0xA0)  # rotate on non-specific EOI: IR6 becomes lowest
    assert pic.acknowledge() == 0x31


def test_poll_mode(pic, irq):
    pulse(pic, 6)
    pic.master.write(0, 1, 0x0C)
    assert pic.master.read(0, 1) == 0x86
    assert pic.master.isr == 0x40
    pic.master.write(0, 1, 0x0C)
    assert pic.master.read(0, 1) == 0x00


def test_level_triggered_via_elcr(pic):
    pic.elcr.write(1, 1, 0xFF)
    assert pic.elcr.read(1, 1) == 0xDE  # IRQ 8 and 13 stay edge
    pic.elcr.write(0, 1, 0xFF)
    assert pic.elcr.read(0, 1) == 0xF8
    pic.set_irq(11, True)
    assert pic.acknowledge() == 0x3B
    pic.slave.write(0, 1, 0x20)
    pic.master.write(0, 1, 0x20)
    assert pic.has_interrupt()  # still held high: requests again
    pic.set_irq(11, False)
    assert pic.slave.irr == 0
    # The master's IR2 is edge-triggered and latched the cascade's rise
    # (as QEMU and KVM do): the request vanished, so INTA gets IRQ 15.
    assert pic.acknowledge() == 0x3F


def test_special_mask_mode(pic):
    pulse(pic, 3)
    assert pic.acknowledge() == 0x33
    pulse(pic, 5)
    assert not pic.has_interrupt()
    pic.master.write(1, 1, 0x08)  # mask the in-service IR3
    pic.master.write(0, 1, 0x68)  # OCW3: set special mask
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x35


def test_icw1_needs_a_new_edge(pic):
    pic.set_irq(4, True)
    pic.master.write(0, 1, 0x11)
    pic.master.write(1, 1, 0x30)
    pic.master.write(1, 1, 0x04)
    pic.master.write(1, 1, 0x01)
    assert not pic.has_interrupt()
    pic.set_irq(4, False)
    pic.set_irq(4, True)
    assert pic.acknowledge() == 0x34


def test_out_of_range(pic):
    pic.set_irq(16, True)
    pic.set_irq(-1, True)
    assert not pic.has_interrupt()
    assert pic.master.read(2, 1) == 0xFF
    assert pic.elcr.read(2, 1) == 0xFF
