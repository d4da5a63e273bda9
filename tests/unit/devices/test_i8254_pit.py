"""The 8254 PIT as Linux programs it (clockevent, TSC calibration) on a fake clock."""

from __future__ import annotations

from xvm.devices.clock import NS_PER_SEC, VirtualClock
from xvm.devices.legacy.i8254_pit import PIT_HZ, I8254Pit, SystemControlPortB


def make(irq):
    clock = VirtualClock(0)
    pit = I8254Pit(irq, clock)
    pit.port_b = SystemControlPortB(pit)  # the test's handle on port 0x61
    return pit, clock


def ns_for(ticks):
    return -(-ticks * NS_PER_SEC // PIT_HZ)


def read_word(pit, ch):
    return pit.read(ch, 1) | pit.read(ch, 1) << 8


def test_periodic_mode2_drives_irq0(irq):
    pit, clock = make(irq)
    latch = (PIT_HZ + 50) // 100  # HZ=100, as setup_pit_timer periodic
    pit.write(3, 1, 0x34)  # channel 0, LSB/MSB, mode 2
    pit.write(0, 1, latch & 0xFF)
    assert pit.next_deadline() is None  # not armed until MSB
    pit.write(0, 1, latch >> 8)
    deadline = pit.next_deadline()
    assert deadline == ns_for(latch)
    raised = irq.raised
    pit.tick(deadline - 1)
    assert irq.raised == raised
    clock.advance_to(deadline)
    pit.tick(deadline)
    assert irq.raised == raised + 1 and irq.level
    nxt = pit.next_deadline()
    assert nxt == ns_for(2 * latch)
    # three periods late: coalesced into one edge
    clock.advance_to(deadline + 3 * ns_for(latch))
    pit.tick(clock.now_ns())
    assert irq.raised == raised + 2


def test_oneshot_mode0(irq):
    pit, clock = make(irq)
    pit.write(3, 1, 0x30)
    assert not irq.level  # OUT low after the mode 0 control word
    pit.write(0, 1, 100)
    pit.write(0, 1, 0)
    when = pit.next_deadline()
    assert when == ns_for(100)
    clock.advance_to(when)
    pit.tick(when)
    assert irq.level and irq.raised == 1
    assert pit.next_deadline() is None
    clock.advance(NS_PER_SEC)
    pit.tick(clock.now_ns())
    assert irq.raised == 1


def test_counter_reads_and_latch(irq):
    pit, clock = make(irq)
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 0x00)
    pit.write(0, 1, 0x10)  # 0x1000
    clock.advance(ns_for(0x100))
    pit.write(3, 1, 0x00)  # latch channel 0
    clock.advance(ns_for(0x100))
    assert read_word(pit, 0) == 0x0F00
    assert read_word(pit, 0) == 0x0E00  # live again after the latch was read


def test_lsb_and_msb_only_access(irq):
    pit, clock = make(irq)
    pit.write(3, 1, 0x50)  # channel 1, LSB only, mode 0
    pit.write(1, 1, 0x80)
    clock.advance(ns_for(0x10))
    assert pit.read(1, 1) == 0x70
    pit.write(3, 1, 0x60)  # channel 1, MSB only
    pit.write(1, 1, 0x02)
    assert pit.read(1, 1) == 0x02


def test_read_back_status_and_count(irq):
    pit, clock = make(irq)
    pit.write(3, 1, 0xB0)  # channel 2, word, mode 0
    pit.write(3, 1, 0xE8)  # read-back status of channel 2: null count
    assert pit.read(2, 1) == 0x40 | 0x30
    pit.write(2, 1, 0x34)
    pit.write(2, 1, 0x12)
    pit.port_b.write(0, 1, 0x01)  # gate 2 high
    clock.advance(ns_for(0x10))
    pit.write(3, 1, 0xC8)  # read-back count and status of channel 2
    status = pit.read(2, 1)
    assert status == 0x30  # OUT low, count loaded, rw 3, mode 0
    assert read_word(pit, 2) == 0x1224


def test_linux_pit_calibrate_tsc_through_port_61(irq):
    """arch/x86/kernel/tsc.c pit_calibrate_tsc(): poll OUT2 in port 0x61 bit 5."""
    pit, clock = make(irq)
    portb = pit.port_b
    portb.write(0, 1, (portb.read(0, 1) & ~0x02) | 0x01)
    pit.write(3, 1, 0xB0)
    latch = PIT_HZ // 20  # 50 ms
    pit.write(2, 1, latch & 0xFF)
    pit.write(2, 1, latch >> 8)
    polls = 0
    while not portb.read(0, 1) & 0x20:
        clock.advance(1_000_000)
        polls += 1
    assert polls == 50


def test_quick_pit_calibrate_reads_msb_without_latch(irq):
    pit, clock = make(irq)
    pit.port_b.write(0, 1, 0x01)
    pit.write(3, 1, 0xB0)
    pit.write(2, 1, 0xFF)
    pit.write(2, 1, 0xFF)
    pit.read(2, 1)
    assert pit.read(2, 1) == 0xFF
    clock.advance(ns_for(256 * 3 + 10))
    pit.read(2, 1)
    assert pit.read(2, 1) == 0xFC


def test_gate_low_halts_mode0(irq):
    pit, clock = make(irq)
    pit.write(3, 1, 0xB0)
    pit.write(2, 1, 0x00)
    pit.write(2, 1, 0x01)  # 256, gate still low
    clock.advance(ns_for(1000))
    assert read_word(pit, 2) == 0x100
    pit.set_gate(2, True)
    clock.advance(ns_for(0x10))
    assert read_word(pit, 2) == 0xF0
    pit.set_gate(2, False)
    clock.advance(ns_for(0x10))
    assert read_word(pit, 2) == 0xF0


def test_mode3_square_wave_and_gate_reload(irq):
    pit, clock = make(irq)
    pit.port_b.write(0, 1, 0x01)
    pit.write(3, 1, 0xB6)  # channel 2, word, mode 3
    pit.write(2, 1, 100)
    pit.write(2, 1, 0)
    assert pit.out(2)
    clock.advance(ns_for(60))
    assert not pit.out(2)
    pit.port_b.write(0, 1, 0x00)
    assert pit.out(2)  # gate low forces OUT high
    pit.port_b.write(0, 1, 0x01)  # rising gate reloads
    assert pit.out(2)
    clock.advance(ns_for(10))
    assert read_word(pit, 2) == 80


def test_mode4_strobe(irq):
    pit, clock = make(irq)
    pit.write(3, 1, 0x38)  # channel 0, mode 4
    pit.write(0, 1, 10)
    pit.write(0, 1, 0)
    assert irq.level
    raised = irq.raised
    when = pit.next_deadline()
    assert when == ns_for(11)
    clock.advance_to(when)
    pit.tick(when)
    assert irq.raised == raised + 1
    assert pit.next_deadline() is None


def test_bcd_counting(irq):
    pit, clock = make(irq)
    pit.write(3, 1, 0x71)  # channel 1, word, mode 0, BCD
    pit.write(1, 1, 0x00)
    pit.write(1, 1, 0x10)  # 1000 decimal
    clock.advance(ns_for(1))
    assert read_word(pit, 1) == 0x0999


def test_port_b_refresh_toggles(irq):
    pit, clock = make(irq)
    first = pit.port_b.read(0, 1) & 0x10
    clock.advance(15085)
    assert pit.port_b.read(0, 1) & 0x10 != first
    pit.port_b.write(0, 1, 0xFF)
    assert pit.port_b.read(0, 1) & 0x0F == 0x0F


def test_out_of_range(irq):
    pit, _ = make(irq)
    assert pit.read(4, 1) == 0xFF
    pit.write(4, 1, 0x12)
    pit.set_gate(5, True)
    assert not pit.out(7)
    assert pit.port_b.read(1, 1) == 0xFF
