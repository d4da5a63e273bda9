"""The RTC as Linux's mc146818_get_time/set_time and rtc-cmos use it."""

from __future__ import annotations

import calendar

import pytest

from xvm.devices.clock import NS_PER_SEC, VirtualClock
from xvm.devices.legacy.mc146818_rtc import Mc146818Rtc

# 2026-11-22 01:02:03 UTC, a Sunday
EPOCH = calendar.timegm((2026, 11, 22, 1, 2, 3, 0, 0, 0))


def make(irq, **kw):
    clock = VirtualClock(1000)
    rtc = Mc146818Rtc(irq, clock, wall_time=lambda: EPOCH + 0.5, **kw)
    return rtc, clock


def cmos(rtc, index, value=None):
    rtc.write(0, 1, index)
    if value is None:
        return rtc.read(1, 1)
    rtc.write(1, 1, value)
    return None


def get_time(rtc):
    """Linux's mc146818_get_time loop, minus udelay."""
    for _ in range(100):
        seconds = cmos(rtc, 0)
        if cmos(rtc, 0x0A) & 0x80:
            continue
        if seconds != cmos(rtc, 0):
            continue
        fields = [cmos(rtc, i) for i in (0, 2, 4, 7, 8, 9, 0x32)]
        ctrl = cmos(rtc, 0x0B)
        if cmos(rtc, 0x0A) & 0x80 or cmos(rtc, 0) != fields[0]:
            continue
        if not ctrl & 0x04:
            fields = [((v >> 4) * 10 + (v & 0xF)) for v in fields]
        return fields
    raise AssertionError("UIP never cleared")


def test_bcd_time_of_day(irq):
    rtc, _ = make(irq)
    assert get_time(rtc) == [3, 2, 1, 22, 11, 26, 20]
    assert cmos(rtc, 0x06) == 1  # Sunday
    assert cmos(rtc, 0x0D) == 0x80  # battery good, bit 6 clear
    assert cmos(rtc, 0x0A) & 0x7F == 0x26


def test_time_follows_the_clock(irq):
    rtc, clock = make(irq)
    clock.advance(3600 * NS_PER_SEC)
    assert get_time(rtc)[:3] == [3, 2, 2]


def test_binary_and_12_hour_modes(irq):
    rtc, clock = make(irq)
    clock.advance(13 * 3600 * NS_PER_SEC)  # 14:02:03
    cmos(rtc, 0x0B, 0x06)  # binary, 24h
    assert cmos(rtc, 0x04) == 14
    cmos(rtc, 0x0B, 0x04)  # binary, 12h
    assert cmos(rtc, 0x04) == 0x80 | 2
    cmos(rtc, 0x0B, 0x00)  # BCD, 12h
    assert cmos(rtc, 0x04) == 0x82
    clock.advance(-(-10 * 3600) * NS_PER_SEC)  # 00:02:03 next day -> 12 AM
    assert cmos(rtc, 0x04) == 0x12


def test_uip_in_last_244us_of_a_second(irq):
    rtc, clock = make(irq)  # starts at .5 s
    assert not cmos(rtc, 0x0A) & 0x80
    clock.advance(NS_PER_SEC // 2 - 100_000)
    assert cmos(rtc, 0x0A) & 0x80
    assert cmos(rtc, 0x00) == 0x03
    clock.advance(100_000)
    assert not cmos(rtc, 0x0A) & 0x80
    assert cmos(rtc, 0x00) == 0x04


def test_set_time_the_linux_way(irq):
    rtc, clock = make(irq)
    cmos(rtc, 0x0B, 0x02 | 0x80)  # SET
    cmos(rtc, 0x0A, 0x26 | 0x70)  # divider reset
    for index, value in ((0x00, 0x59), (0x02, 0x59), (0x04, 0x23), (0x07, 0x31), (0x08, 0x12),
                         (0x09, 0x99), (0x32, 0x19)):
        cmos(rtc, index, value)
    clock.advance(5 * NS_PER_SEC)  # frozen while SET
    assert cmos(rtc, 0x00) == 0x59
    assert not cmos(rtc, 0x0A) & 0x80
    cmos(rtc, 0x0B, 0x02)
    cmos(rtc, 0x0A, 0x26)
    clock.advance(NS_PER_SEC)
    assert get_time(rtc) == [0, 0, 0, 1, 1, 0, 20]


def test_single_byte_write_while_running(irq):
    rtc, _ = make(irq)
    cmos(rtc, 0x02, 0x30)
    assert get_time(rtc)[:3] == [3, 30, 1]


def test_periodic_interrupt(irq):
    rtc, clock = make(irq)
    cmos(rtc, 0x0A, 0x26)  # 1024 Hz
    cmos(rtc, 0x0B, 0x02 | 0x40)  # PIE
    deadline = rtc.next_deadline()
    assert deadline is not None and 0 < deadline - clock.now_ns() <= NS_PER_SEC // 1024 + 1
    rtc.tick(deadline - 1)
    assert not irq.level
    clock.advance_to(deadline)
    rtc.tick(clock.now_ns())
    assert irq.level
    assert rtc.next_deadline() is None  # already asserted
    assert cmos(rtc, 0x0C) & 0xC0 == 0xC0
    assert not irq.level
    assert cmos(rtc, 0x0C) == 0
    nxt = rtc.next_deadline()
    assert abs((nxt - deadline) - NS_PER_SEC // 1024) <= 1
    # rate 15 = 2 Hz
    cmos(rtc, 0x0A, 0x2F)
    assert rtc.next_deadline() - clock.now_ns() <= NS_PER_SEC // 2


def test_update_ended_and_alarm(irq):
    rtc, clock = make(irq)
    cmos(rtc, 0x01, 0x05)  # alarm at hh:mm:05 for any hour/minute
    cmos(rtc, 0x03, 0xC0)
    cmos(rtc, 0x05, 0xFF)
    cmos(rtc, 0x0B, 0x02 | 0x20)  # AIE
    assert rtc.next_deadline() == clock.now_ns() + NS_PER_SEC // 2 + NS_PER_SEC
    clock.advance(NS_PER_SEC)  # 01:02:04.5: update ended, no alarm yet
    rtc.tick(clock.now_ns())
    assert not irq.level
    assert cmos(rtc, 0x0C) & 0xB0 == 0x10  # UF set even without UIE (PF too: rate 6 runs)
    clock.advance(NS_PER_SEC)
    rtc.tick(clock.now_ns())
    assert irq.level
    assert cmos(rtc, 0x0C) & 0xB0 == 0x80 | 0x20 | 0x10
    assert not irq.level
    # next match is a minute later
    assert rtc.next_deadline() == clock.now_ns() + 60 * NS_PER_SEC - NS_PER_SEC // 2


def test_alarm_that_cannot_match(irq):
    rtc, _ = make(irq)
    cmos(rtc, 0x05, 0x25)  # hour 25 in BCD
    cmos(rtc, 0x0B, 0x02 | 0x20)
    assert rtc.next_deadline() is None


def test_memory_size_bytes(irq):
    rtc, _ = make(irq, mem_below_4g=3 * 1024**3, mem_above_4g=1024**3)
    word = lambda lo: cmos(rtc, lo) | cmos(rtc, lo + 1) << 8  # noqa: E731
    assert word(0x15) == 640
    assert word(0x17) == 0xFFFF and word(0x30) == 0xFFFF
    assert word(0x34) == (3 * 1024**3 - 16 * 1024**2) // 65536
    assert cmos(rtc, 0x5B) | cmos(rtc, 0x5C) << 8 | cmos(rtc, 0x5D) << 16 == 1024**3 // 65536
    small, _ = make(irq, mem_below_4g=8 * 1024**2)
    assert cmos(small, 0x17) | cmos(small, 0x18) << 8 == 7 * 1024
    assert cmos(small, 0x34) == 0


def test_index_port_and_nmi_mask(irq):
    rtc, _ = make(irq)
    rtc.write(0, 1, 0x80 | 0x40)
    assert rtc.nmi_masked
    rtc.write(1, 1, 0xAB)
    rtc.write(0, 1, 0x40)
    assert not rtc.nmi_masked
    assert rtc.read(1, 1) == 0xAB
    assert rtc.read(0, 1) == 0xFF
    cmos(rtc, 0x0C, 0xFF)  # read-only
    cmos(rtc, 0x0D, 0x00)
    assert cmos(rtc, 0x0D) == 0x80


def test_garbage_time_registers_do_not_crash(irq):
    rtc, _ = make(irq)
    cmos(rtc, 0x0B, 0x80 | 0x04)
    for index in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32):
        cmos(rtc, index, 0xFF)
    cmos(rtc, 0x0B, 0x04)
    get_time(rtc)


# Register A rate select -> periodic interrupts per second with the 32.768 kHz time base
# (MC146818A datasheet table 3): rates 1 and 2 repeat rates 8 and 9.
RATE_HZ = {1: 256, 2: 128, 3: 8192, 4: 4096, 5: 2048, 6: 1024, 7: 512, 8: 256, 9: 128, 10: 64, 11: 32,
           12: 16, 13: 8, 14: 4, 15: 2}


@pytest.mark.parametrize("rate", sorted(RATE_HZ))
def test_periodic_rate_counts_per_second(irq, rate):
    """Ticking at each deadline and acknowledging (register C) gives the datasheet's rate per second."""
    rtc, clock = make(irq)
    cmos(rtc, 0x0A, 0x20 | rate)
    cmos(rtc, 0x0B, 0x02 | 0x40)  # PIE
    start = clock.now_ns()
    count = 0
    while True:
        deadline = rtc.next_deadline()
        if deadline > start + NS_PER_SEC:
            break
        clock.advance_to(deadline)
        rtc.tick(deadline)
        assert irq.level
        assert cmos(rtc, 0x0C) & 0xC0 == 0xC0  # IRQF | PF (UF too at a second boundary); reading clears them
        assert not irq.level
        count += 1
    assert count == RATE_HZ[rate]


def test_rate_zero_and_pie_off_have_no_periodic_deadline(irq):
    rtc, _clock = make(irq)
    cmos(rtc, 0x0A, 0x20)  # rate 0: periodic interrupt off
    cmos(rtc, 0x0B, 0x02 | 0x40)
    assert rtc.next_deadline() is None
    cmos(rtc, 0x0A, 0x26)
    cmos(rtc, 0x0B, 0x02)  # PIE off: PF is still flagged, but no IRQ deadline
    assert rtc.next_deadline() is None
