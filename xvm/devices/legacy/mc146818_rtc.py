"""MC146818 real-time clock and CMOS RAM (ports 0x70/0x71, IRQ 8).

Port 0x70 selects one of 128 CMOS bytes (bit 7 masks NMI on a PC), port 0x71
reads or writes it. Bytes 0x00-0x0D are the clock: time and alarm in BCD or
binary (register B bit 2), 12- or 24-hour (bit 1), and the control registers
A-D. The rest is battery-backed RAM where firmware keeps the memory size
(SeaBIOS and QEMU's pc_cmos_init agree on the layout below) and the century.

Time is never stored ticking: the RTC keeps an offset from the injected Clock
and renders the registers when read, so a VirtualClock that jumps ahead moves
the time of day by the same amount. Interrupt sources (periodic from register
A's rate, alarm, update-ended) are evaluated lazily: `tick(now_ns)` sets the
register C flags for every event since the last look, and `next_deadline()`
says when the IRQ line would next change (STYLE.md 12). Register C reads also
catch up first, so a polling guest sees the flags without any tick.

Update-in-progress: as in QEMU, UIP reads 1 in the last 244 us (8 cycles of
32.768 kHz) before each second rolls over, which is what Linux's
mc146818_get_time() waits out before trusting a readout.

    rtc = Mc146818Rtc(irq8, clock, mem_below_4g=512 * MiB)
    pio.insert(rtc, PORT_RTC, 2)
"""

from __future__ import annotations

import calendar
import time
from typing import Callable, Optional

from xvm.bus.irq import IrqLine
from xvm.devices.clock import NS_PER_SEC, Clock

OFFSET_INDEX = 0  # port 0x70
OFFSET_DATA = 1  # port 0x71

CMOS_SIZE = 128
CMOS_INDEX_MASK = 0x7F
CMOS_NMI_DISABLE = 0x80  # port 0x70 bit 7

# Clock registers (MC146818 datasheet, Linux include/linux/mc146818rtc.h).
RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06  # 1 = Sunday
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_REG_A = 0x0A
RTC_REG_B = 0x0B
RTC_REG_C = 0x0C
RTC_REG_D = 0x0D
#: Century, where the ACPI FADT "century" field of QEMU and SeaBIOS points.
RTC_CENTURY = 0x32

# Register A.
RTC_UIP = 0x80  # update in progress
RTC_DIV_CTL = 0x70  # divider control; 010 = 32.768 kHz time base running
RTC_RATE_SELECT = 0x0F  # periodic interrupt rate; 0 = off
# Register B.
RTC_SET = 0x80  # halt updates so software can set the time
RTC_PIE = 0x40  # periodic interrupt enable
RTC_AIE = 0x20  # alarm interrupt enable
RTC_UIE = 0x10  # update-ended interrupt enable
RTC_SQWE = 0x08
RTC_DM_BINARY = 0x04  # 1 = binary, 0 = BCD
RTC_24H = 0x02  # 1 = 24-hour mode
RTC_DST_EN = 0x01
# Register C (read-only, cleared by reading).
RTC_IRQF = 0x80  # an enabled flag below is set: the IRQ line is asserted
RTC_PF = 0x40  # periodic
RTC_AF = 0x20  # alarm
RTC_UF = 0x10  # update ended
RTC_INTR_FLAGS = RTC_PF | RTC_AF | RTC_UF
# Register D.
RTC_VRT = 0x80  # valid RAM and time: the battery is good
RTC_HOURS_PM = 0x80  # 12-hour mode: PM flag in the hours register
RTC_ALARM_DONT_CARE = 0xC0  # alarm byte with both top bits set matches any value

# CMOS RAM bytes for memory size (QEMU hw/i386/pc.c pc_cmos_init; SeaBIOS src/fw/paravirt.c).
CMOS_BASE_MEM_LO = 0x15  # conventional memory in KiB (640)
CMOS_BASE_MEM_HI = 0x16
CMOS_EXT_MEM_LO = 0x17  # KiB above 1 MiB, at most 65535
CMOS_EXT_MEM_HI = 0x18
CMOS_EXT_MEM2_LO = 0x30  # the same value again (POST-tested copy)
CMOS_EXT_MEM2_HI = 0x31
CMOS_MEM_ABOVE_16M_LO = 0x34  # 64 KiB units between 16 MiB and 4 GiB
CMOS_MEM_ABOVE_16M_HI = 0x35
CMOS_MEM_ABOVE_4G = 0x5B  # 0x5B-0x5D: 64 KiB units above 4 GiB (3 bytes)

REG_A_RESET = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate
REG_B_RESET = RTC_24H  # BCD, 24-hour, no interrupts
RTC_BASE_HZ = 32768
#: UIP reads 1 this long before each second ends (8 time-base cycles, as QEMU).
UIP_HOLD_NS = 8 * NS_PER_SEC // RTC_BASE_HZ

_KiB = 1024
_MiB = 1024 * 1024
_SECONDS_PER_DAY = 86400


def _to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    # A guest may store invalid BCD digits; decode them the way the chip counts (no exception).
    return ((value >> 4) & 0x0F) * 10 + (value & 0x0F)


class Mc146818Rtc:
    """RTC + CMOS RAM; the time of day starts at `wall_time()` and follows `clock`."""

    def __init__(
        self,
        irq: IrqLine,
        clock: Clock,
        wall_time: Callable[[], float] = time.time,
        mem_below_4g: int = 0,
        mem_above_4g: int = 0,
    ) -> None:
        self._irq = irq
        self._clock = clock
        self._cmos = bytearray(CMOS_SIZE)
        self._index = 0
        self.nmi_masked = False
        self._cmos[RTC_REG_A] = REG_A_RESET
        self._cmos[RTC_REG_B] = REG_B_RESET
        self._cmos[RTC_REG_D] = RTC_VRT
        now = clock.now_ns()
        #: RTC time (ns since the Unix epoch) = clock.now_ns() + _offset_ns.
        self._offset_ns = int(wall_time() * NS_PER_SEC) - now
        self._last_rtc_ns = now + self._offset_ns  # events up to here are in register C
        self._irq_level = False
        self._store_memory_size(mem_below_4g, mem_above_4g)

    # --- BusDevice -------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset != OFFSET_DATA:
            return 0xFF  # the index port is write-only
        index = self._index
        now = self._clock.now_ns()
        self._catch_up(now)
        if index <= RTC_YEAR and index not in (RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM):
            if not self._cmos[RTC_REG_B] & RTC_SET:
                self._render_time(now)
            return self._cmos[index]
        if index == RTC_CENTURY and not self._cmos[RTC_REG_B] & RTC_SET:
            self._render_time(now)
        if index == RTC_REG_A:
            value = self._cmos[RTC_REG_A] & ~RTC_UIP
            if self._update_in_progress(now):
                value |= RTC_UIP
            return value
        if index == RTC_REG_C:
            value = self._cmos[RTC_REG_C]
            self._cmos[RTC_REG_C] = 0
            self._update_irq()
            return value
        return self._cmos[index]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == OFFSET_INDEX:
            self._index = value & CMOS_INDEX_MASK
            self.nmi_masked = bool(value & CMOS_NMI_DISABLE)
            return
        if offset != OFFSET_DATA:
            return
        index = self._index
        now = self._clock.now_ns()
        self._catch_up(now)
        if index in (RTC_REG_C, RTC_REG_D):
            return  # read-only
        if index == RTC_REG_A:
            self._cmos[RTC_REG_A] = value & ~RTC_UIP
        elif index == RTC_REG_B:
            self._write_reg_b(now, value)
        elif index <= RTC_YEAR or index == RTC_CENTURY:
            self._write_time_byte(now, index, value)
        else:
            self._cmos[index] = value
        self._update_irq()

    # --- timed-device protocol ----------------------------------------------------
    def tick(self, now_ns: int) -> None:
        """Set the register C flags for everything that happened up to `now_ns`."""
        self._catch_up(now_ns)
        self._update_irq()

    def next_deadline(self) -> Optional[int]:
        """Clock time of the next event that would raise the IRQ, or None."""
        if self._irq_level:
            return None  # the line stays high until register C is read
        reg_b = self._cmos[RTC_REG_B]
        rtc = self._last_rtc_ns
        candidates = []
        period = self._period_ticks()
        if reg_b & RTC_PIE and period:
            ticks = rtc * RTC_BASE_HZ // NS_PER_SEC
            boundary = (ticks // period + 1) * period
            candidates.append(-(-boundary * NS_PER_SEC // RTC_BASE_HZ))
        if not reg_b & RTC_SET:
            second = rtc // NS_PER_SEC
            if reg_b & RTC_UIE:
                candidates.append((second + 1) * NS_PER_SEC)
            if reg_b & RTC_AIE:
                alarm = self._next_alarm(second)
                if alarm is not None:
                    candidates.append(alarm * NS_PER_SEC)
        if not candidates:
            return None
        return min(candidates) - self._offset_ns

    # --- time of day -----------------------------------------------------------
    def _update_in_progress(self, now: int) -> bool:
        if self._cmos[RTC_REG_B] & RTC_SET:
            return False  # SET halts the update cycle and clears UIP
        return (now + self._offset_ns) % NS_PER_SEC >= NS_PER_SEC - UIP_HOLD_NS

    def _encode(self, value: int) -> int:
        return value if self._cmos[RTC_REG_B] & RTC_DM_BINARY else _to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self._cmos[RTC_REG_B] & RTC_DM_BINARY else _from_bcd(value)

    def _encode_hours(self, hour: int) -> int:
        if self._cmos[RTC_REG_B] & RTC_24H:
            return self._encode(hour)
        pm = RTC_HOURS_PM if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _decode_hours(self, value: int) -> int:
        if self._cmos[RTC_REG_B] & RTC_24H:
            return self._decode(value)
        hour = self._decode(value & ~RTC_HOURS_PM) % 12
        return hour + 12 if value & RTC_HOURS_PM else hour

    def _render_time(self, now: int) -> None:
        """Write the current time of day into the clock registers."""
        tm = time.gmtime((now + self._offset_ns) // NS_PER_SEC)
        cmos = self._cmos
        cmos[RTC_SECONDS] = self._encode(tm.tm_sec % 60)
        cmos[RTC_MINUTES] = self._encode(tm.tm_min)
        cmos[RTC_HOURS] = self._encode_hours(tm.tm_hour)
        cmos[RTC_DAY_OF_WEEK] = self._encode((tm.tm_wday + 1) % 7 + 1)
        cmos[RTC_DAY_OF_MONTH] = self._encode(tm.tm_mday)
        cmos[RTC_MONTH] = self._encode(tm.tm_mon)
        cmos[RTC_YEAR] = self._encode(tm.tm_year % 100)
        cmos[RTC_CENTURY] = self._encode(tm.tm_year // 100)

    def _registers_to_seconds(self) -> int:
        """Seconds since the epoch the clock registers spell (clamped into range)."""
        cmos = self._cmos
        year = min(max(self._decode(cmos[RTC_CENTURY]) * 100 + self._decode(cmos[RTC_YEAR]), 1), 9999)
        month = min(max(self._decode(cmos[RTC_MONTH]), 1), 12)
        day = min(max(self._decode(cmos[RTC_DAY_OF_MONTH]), 1), calendar.monthrange(year, month)[1])
        hour = min(self._decode_hours(cmos[RTC_HOURS]), 23)
        minute = min(self._decode(cmos[RTC_MINUTES]), 59)
        second = min(self._decode(cmos[RTC_SECONDS]), 59)
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))

    def _set_time_from_registers(self, now: int, keep_fraction: bool) -> None:
        fraction = (now + self._offset_ns) % NS_PER_SEC if keep_fraction else 0
        self._offset_ns = self._registers_to_seconds() * NS_PER_SEC + fraction - now
        self._last_rtc_ns = now + self._offset_ns  # no events for the jump itself

    def _write_time_byte(self, now: int, index: int, value: int) -> None:
        running = not self._cmos[RTC_REG_B] & RTC_SET
        if running:
            self._render_time(now)  # the other fields keep their current values
        self._cmos[index] = value
        if running and index not in (RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM):
            self._set_time_from_registers(now, keep_fraction=True)

    def _write_reg_b(self, now: int, value: int) -> None:
        old = self._cmos[RTC_REG_B]
        if value & RTC_SET and not old & RTC_SET:
            self._render_time(now)  # freeze the registers as they are now
        self._cmos[RTC_REG_B] = value
        if old & RTC_SET and not value & RTC_SET:
            # Leaving SET restarts the update cycle at the start of a second.
            self._set_time_from_registers(now, keep_fraction=False)

    # --- interrupt sources -------------------------------------------------------
    def _period_ticks(self) -> int:
        """Periodic interrupt period in 32.768 kHz cycles (datasheet table 3), 0 = off."""
        rate = self._cmos[RTC_REG_A] & RTC_RATE_SELECT
        if rate == 0:
            return 0
        if rate <= 2:
            rate += 7  # rates 1 and 2 repeat 8 and 9 with the 32.768 kHz time base
        return 1 << (rate - 1)

    def _alarm_fields(self) -> tuple:
        """(hour, minute, second) the alarm wants; None where it matches anything."""
        cmos = self._cmos

        def field(index: int, decode: Callable[[int], int]) -> Optional[int]:
            raw = cmos[index]
            if raw & RTC_ALARM_DONT_CARE == RTC_ALARM_DONT_CARE:
                return None
            return decode(raw)

        return (
            field(RTC_HOURS_ALARM, self._decode_hours),
            field(RTC_MINUTES_ALARM, self._decode),
            field(RTC_SECONDS_ALARM, self._decode),
        )

    def _next_alarm(self, after: int) -> Optional[int]:
        """First whole second > `after` matching the alarm, or None if none can."""
        hour, minute, second = self._alarm_fields()
        if (hour is not None and hour > 23) or (minute is not None and minute > 59) or (
            second is not None and second > 59
        ):
            return None
        t = after + 1
        # Each step skips to the next hour, minute or second that could match:
        # at most 24 + 60 + 60 steps within a day.
        while t <= after + 1 + _SECONDS_PER_DAY:
            day_second = t % _SECONDS_PER_DAY
            h, rest = divmod(day_second, 3600)
            m, s = divmod(rest, 60)
            if hour is not None and h != hour:
                t += 3600 - rest
            elif minute is not None and m != minute:
                t += 60 - s
            elif second is not None and s != second:
                t += 1
            else:
                return t
        return None

    def _catch_up(self, now: int) -> None:
        """Fold every periodic, update and alarm event in (last look, now] into register C."""
        rtc = now + self._offset_ns
        last = self._last_rtc_ns
        if rtc <= last:
            return
        flags = 0
        period = self._period_ticks()
        if period and (rtc * RTC_BASE_HZ // NS_PER_SEC) // period > (last * RTC_BASE_HZ // NS_PER_SEC) // period:
            flags |= RTC_PF
        if not self._cmos[RTC_REG_B] & RTC_SET:
            last_second, second = last // NS_PER_SEC, rtc // NS_PER_SEC
            if second > last_second:
                flags |= RTC_UF
                alarm = self._next_alarm(last_second)
                if alarm is not None and alarm <= second:
                    flags |= RTC_AF
        self._cmos[RTC_REG_C] |= flags
        self._last_rtc_ns = rtc

    def _update_irq(self) -> None:
        reg_c = self._cmos[RTC_REG_C] & RTC_INTR_FLAGS
        level = bool(reg_c & self._cmos[RTC_REG_B])
        if level:
            self._cmos[RTC_REG_C] |= RTC_IRQF
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    # --- CMOS RAM -----------------------------------------------------------------
    def _store_memory_size(self, below_4g: int, above_4g: int) -> None:
        """The memory-size bytes SeaBIOS reads (as QEMU's pc_cmos_init writes them)."""
        cmos = self._cmos
        base_kib = 640
        cmos[CMOS_BASE_MEM_LO] = base_kib & 0xFF
        cmos[CMOS_BASE_MEM_HI] = base_kib >> 8
        ext_kib = min(max(below_4g // _KiB - 1024, 0), 0xFFFF)
        for lo in (CMOS_EXT_MEM_LO, CMOS_EXT_MEM2_LO):
            cmos[lo] = ext_kib & 0xFF
            cmos[lo + 1] = ext_kib >> 8
        above_16m = min(max(below_4g - 16 * _MiB, 0) // (64 * _KiB), 0xFFFF)
        cmos[CMOS_MEM_ABOVE_16M_LO] = above_16m & 0xFF
        cmos[CMOS_MEM_ABOVE_16M_HI] = above_16m >> 8
        high = min(above_4g // (64 * _KiB), 0xFFFFFF)
        cmos[CMOS_MEM_ABOVE_4G] = high & 0xFF
        cmos[CMOS_MEM_ABOVE_4G + 1] = (high >> 8) & 0xFF
        cmos[CMOS_MEM_ABOVE_4G + 2] = high >> 16
