"""The PC interrupt wiring: PIC in virtual-wire mode, IOAPIC routes, MSIs, IPIs, timers."""

from __future__ import annotations

import pytest

from xvm.arch.x86 import layout
from xvm.bus.bus import Bus
from xvm.bus.irq import MsiMessage
from xvm.devices.clock import VirtualClock
from xvm.devices.legacy.i8254_pit import I8254Pit
from xvm.devices.legacy.interrupts import InterruptRouter


@pytest.fixture
def machine():
    clock = VirtualClock(0)
    woken = []
    router = InterruptRouter(2, clock, on_wake=woken.append)
    pio, mmio = Bus("pio"), Bus("mmio")
    for base, length, dev in router.pio_devices():
        pio.insert(dev, base, length)
    for base, length, dev in router.mmio_devices():
        mmio.insert(dev, base, length)
    return router, pio, mmio, clock, woken


def init_pic(pio):
    for port, value in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
                        (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01),
                        (0x21, 0x00), (0xA1, 0x00)):
        pio.write(port, 1, value)


def lapic_write(mmio, reg, value):
    mmio.write(layout.LAPIC_START + reg, 4, value)


def ioapic_reg(mmio, index, value):
    mmio.write(layout.IOAPIC_START, 4, index)
    mmio.write(layout.IOAPIC_START + 0x10, 4, value)


def test_pic_reaches_cpu0_in_virtual_wire_mode(machine):
    router, pio, _, _, woken = machine
    init_pic(pio)
    line = router.irq_line(layout.IRQ_COM1)
    line.set_level(True)
    assert woken == [0]
    assert router.pending(0) and not router.pending(1)
    assert router.acknowledge(0) == 0x34
    line.set_level(False)
    pio.write(0x20, 1, 0x20)
    assert not router.pending(0)


def test_masked_lint0_blocks_the_pic(machine):
    router, pio, mmio, _, _ = machine
    init_pic(pio)
    lapic_write(mmio, 0xF0, 0x1FF)
    lapic_write(mmio, 0x350, 0x10700)
    router.irq_line(4).set_level(True)
    assert not router.pending(0)
    router.lapics[0].write_apic_base(0)  # hardware-disabled APIC: INTR goes straight in
    assert router.pending(0)
    assert router.acknowledge(0) == 0x34


def test_ioapic_route_to_cpu1(machine):
    router, _, mmio, _, woken = machine
    router.bind_cpu(1)
    lapic_write(mmio, 0xF0, 0x1FF)  # enables CPU 1's LAPIC only
    router.bind_cpu(0)
    assert not router.lapics[0].software_enabled and router.lapics[1].software_enabled
    ioapic_reg(mmio, 0x10 + 2 * 4, 0x41)
    ioapic_reg(mmio, 0x11 + 2 * 4, 0x01000000)
    router.irq_line(4).set_level(True)
    assert 1 in woken
    assert router.pending(1)
    assert router.acknowledge(1) == 0x41


def test_pit_irq0_goes_to_its_ioapic_pin(machine):
    router, _, mmio, clock, _ = machine
    lapic_write(mmio, 0xF0, 0x1FF)
    lapic_write(mmio, 0x350, 0x10700)  # LINT0 masked: IOAPIC only
    pin = router.ioapic_pin(layout.IRQ_PIT)
    assert pin == layout.PIT_IOAPIC_PIN
    ioapic_reg(mmio, 0x10 + 2 * pin, 0x30)
    pit = I8254Pit(router.irq_line(layout.IRQ_PIT), clock)
    pio = Bus("pio2")
    pio.insert(router.add_timer(pit), layout.PORT_I8254_PIT, 4)
    pio.write(0x43, 1, 0x34)
    pio.write(0x40, 1, 0x9C)
    pio.write(0x40, 1, 0x2E)  # 11932: 100 Hz
    deadline = router.next_deadline()
    assert deadline is not None
    clock.advance_to(deadline)
    router.tick(clock.now_ns())
    assert router.pending(0)
    assert router.acknowledge(0) == 0x30


def test_msi_and_lowest_priority(machine):
    router, _, _, _, _ = machine
    for apic in router.lapics:
        apic.write(0xF0, 4, 0x1FF)
        apic.write(0xD0, 4, 0x01000000 << apic.apic_id)  # flat logical IDs 1, 2
    router.signal_msi(MsiMessage(address=0xFEE01000, data=0x4051))  # dest 1, physical
    assert router.acknowledge(1) == 0x51
    router.lapics[1].write(0xB0, 4, 0)  # EOI
    router.lapics[0].write(0x80, 4, 0x80)  # CPU 0 busy: lowest priority picks CPU 1
    router.signal_msi(MsiMessage(address=0xFEE03004, data=0x0152))  # logical 0b11, lowest prio
    assert not router.pending(0) and router.pending(1)
    router.signal_msi(MsiMessage(address=0x12345678, data=0x60))
    assert router.dropped_msis == 1


def test_ipi_shorthands_and_nmi(machine):
    router, _, mmio, _, _ = machine
    for apic in router.lapics:
        apic.write(0xF0, 4, 0x1FF)
    lapic_write(mmio, 0x300, 0x000440F3)  # self IPI, vector 0xF3
    assert router.acknowledge(0) == 0xF3
    assert not router.pending(1)
    lapic_write(mmio, 0x300, 0x000C0400)  # NMI to all but self
    assert router.take_nmi(1) and not router.take_nmi(0)
    lapic_write(mmio, 0x310, 0x01000000)
    lapic_write(mmio, 0x300, 0x00004500)  # INIT to APIC 1
    lapic_write(mmio, 0x300, 0x00000699)  # SIPI 0x99 to APIC 1
    assert router.take_init(1)
    assert router.take_sipi(1) == 0x99


def test_level_pci_gsi_and_eoi(machine):
    router, _, mmio, _, _ = machine
    lapic_write(mmio, 0xF0, 0x1FF)
    ioapic_reg(mmio, 0x10 + 2 * 17, 0x8061)  # GSI 17, level
    line = router.irq_line(17)
    line.set_level(True)
    assert router.acknowledge(0) == 0x61
    lapic_write(mmio, 0xB0, 0)  # EOI: line still high, delivered again
    assert router.pending(0)
    line.set_level(False)
    assert router.acknowledge(0) == 0x61
    lapic_write(mmio, 0xB0, 0)
    assert not router.pending(0)


def test_extint_through_the_ioapic(machine):
    router, pio, mmio, _, _ = machine
    init_pic(pio)
    lapic_write(mmio, 0xF0, 0x1FF)
    lapic_write(mmio, 0x350, 0x10700)
    ioapic_reg(mmio, 0x10 + 2 * 3, 0x0700)  # pin 3: ExtINT
    router.irq_line(3).set_level(True)
    assert router.pending(0)
    assert router.acknowledge(0) == 0x33


def test_timers_and_bounds(machine):
    router, _, mmio, clock, _ = machine
    assert router.next_deadline() is None
    lapic_write(mmio, 0xF0, 0x1FF)
    lapic_write(mmio, 0x3E0, 0xB)
    lapic_write(mmio, 0x320, 0x20042)
    lapic_write(mmio, 0x380, 500)
    assert router.next_deadline() == 500
    router.tick(500)
    assert router.acknowledge(0) == 0x42
    router.irq_line(99).set_level(True)
    router.irq_line(-3).set_level(True)
    with pytest.raises(ValueError):
        router.bind_cpu(2)


def test_uart_interrupt_through_the_router(machine):
    """COM1's THRE interrupt reaches CPU 0 as vector 0x34 through the PIC in virtual-wire mode."""
    from xvm.devices.legacy.uart8250 import Uart8250

    router, pio, _, _, _ = machine
    init_pic(pio)
    uart = Uart8250(router.irq_line(layout.IRQ_COM1), lambda data: None)
    pio.insert(uart, layout.PORT_COM1, 8)
    pio.write(0x3FC, 1, 0x0B)  # MCR: DTR | RTS | OUT2
    pio.write(0x3F9, 1, 0x03)  # IER: RDI | THRI
    assert router.acknowledge(0) == 0x34
    assert pio.read(0x3FA, 1) & 0x0F == 0x02  # the handler reads IIR: THRE
    assert pio.read(0x3FA, 1) & 0x01
    pio.write(0x20, 1, 0x20)
    uart.receive(b"x")  # console thread
    assert router.pending(0)
    assert router.acknowledge(0) == 0x34
    assert pio.read(0x3F8, 1) == ord("x")
