"""The 8254 programmable interval timer and the PC's system control port B.

Three 16-bit down-counters clocked at 1.193182 MHz (ports 0x40-0x42, control
word at 0x43). On a PC, channel 0's OUT drives IRQ 0, channel 1 once
refreshed DRAM, and channel 2's GATE and OUT are wired to port 0x61 (speaker
and, for Linux, TSC calibration: arch/x86/kernel/tsc.c pit_calibrate_tsc()
starts channel 2 in mode 0 through 0x61 bit 0 and polls OUT2 in bit 5).

No counter is ever decremented: each channel remembers when it was loaded
and derives the count and the OUT level from the injected Clock (elapsed
ns x 1193182 / 1e9). IRQ 0 follows channel 0's OUT lazily: `tick(now_ns)`
delivers a rising edge for the period(s) that ended since the last tick
(several lost periods coalesce into one, as QEMU's "discard" lost-tick
policy; Linux's clocksource keeps time anyway) and `next_deadline()` says
when the next one is due (STYLE.md 12).

Modelled from the 8254 datasheet and QEMU's hw/timer/i8254.c: access modes
LSB / MSB / LSB-then-MSB, counter latch, read-back (count and status),
BCD counting, modes 0-5 (6 and 7 alias 2 and 3), GATE (counting suspended
in modes 0, 2, 3, 4 while low; rising edge reloads in 2/3 and triggers 1/5).
A count written while a periodic mode runs takes effect at once rather than
at the next reload, as in QEMU.

    pit = I8254Pit(irq0, clock)
    pio.insert(pit, PORT_I8254_PIT, 4)
    pio.insert(SystemControlPortB(pit), PORT_SYSTEM_CONTROL_B, 1)
"""

from __future__ import annotations

from typing import Optional

from xvm.bus.irq import IrqLine
from xvm.devices.clock import NS_PER_SEC, Clock

PIT_HZ = 1_193_182
PIT_CHANNELS = 3
OFFSET_CONTROL = 3  # port 0x43: mode/command register (write only)

# Control word (8254 datasheet, figure 7).
PIT_SC_SHIFT = 6  # select counter; 3 = read-back command
PIT_READ_BACK = 3
PIT_RW_SHIFT = 4  # access mode: 0 latch, 1 LSB, 2 MSB, 3 LSB then MSB
PIT_MODE_SHIFT = 1
PIT_BCD = 0x01
RW_LATCH = 0
RW_LSB = 1
RW_MSB = 2
RW_WORD = 3
# Read-back command bits (active low selects).
PIT_RB_NO_COUNT = 0x20
PIT_RB_NO_STATUS = 0x10
# Status byte.
PIT_STATUS_OUT = 0x80
PIT_STATUS_NULL_COUNT = 0x40

# Port 0x61, system control port B (Intel ICH "NMI status and control").
PORTB_GATE2 = 0x01  # timer 2 gate
PORTB_SPEAKER = 0x02  # speaker data enable
PORTB_WRITABLE = 0x0F  # bits 2-3 enable parity/IOCHK NMIs; 7:4 read-only
PORTB_REFRESH = 0x10  # toggles every 15.085 us (DRAM refresh request)
PORTB_OUT2 = 0x20  # timer 2 output
REFRESH_TOGGLE_NS = 15085


def _ticks_to_ns(ticks: int) -> int:
    """Smallest ns count that is at least `ticks` PIT clocks."""
    return -(-ticks * NS_PER_SEC // PIT_HZ)


class _Channel:
    """One counter: its programming and the time base its count derives from."""

    def __init__(self, gate: bool) -> None:
        self.mode = 0
        self.rw_mode = RW_WORD
        self.bcd = False
        self.count = 0x10000  # reload value as loaded (0 means 65536)
        self.armed = False  # a count has been written since the control word
        self.triggered = False  # modes 1/5: a gate edge started the count
        self.gate = gate
        self.read_word1 = False  # next unlatched read returns the MSB (RW_WORD)
        self.write_word1 = False  # next write is the MSB (RW_WORD)
        self.write_lsb = 0
        self.latched: list = []  # latched count bytes still to be read
        self.status: Optional[int] = None  # latched status byte
        self._start_ns = 0  # clock time at which elapsed() last started from _base
        self._base = 0  # PIT clocks already elapsed at _start_ns
        self._frozen = False

    # --- time ------------------------------------------------------------------------
    def elapsed(self, now: int) -> int:
        """PIT clocks counted since the count was (re)loaded."""
        if self._frozen:
            return self._base
        return self._base + (now - self._start_ns) * PIT_HZ // NS_PER_SEC

    def restart(self, now: int) -> None:
        self._start_ns = now
        self._base = 0
        self._frozen = not self._counts()

    def _counts(self) -> bool:
        """Whether GATE lets the counter run (a low gate halts modes 0, 2, 3, 4)."""
        return self.gate or self.mode in (1, 5)

    def set_gate(self, now: int, level: bool) -> None:
        rising = level and not self.gate
        if not self._frozen:
            self._base = self.elapsed(now)
        self.gate = level
        self._start_ns = now
        if rising and self.mode in (1, 2, 3, 5) and self.armed:
            self._base = 0  # modes 2/3 reload, 1/5 trigger on a rising gate
            self.triggered = True
        self._frozen = not self._counts()

    # --- counter and OUT ----------------------------------------------------------
    def running(self) -> bool:
        """Counting towards an OUT edge: armed, and triggered when the mode needs it."""
        return self.armed and (self.mode not in (1, 5) or self.triggered)

    def counter(self, now: int) -> int:
        """The value a read or latch sees (in the channel's number format)."""
        count = self.count
        if not self.running():
            value = count
        else:
            d = self.elapsed(now)
            if self.mode == 2:
                value = count - d % count
            elif self.mode == 3:
                value = count - (2 * d) % count
            else:
                value = (count - d) % (10000 if self.bcd else 0x10000)
        value %= 10000 if self.bcd else 0x10000
        if self.bcd:
            return int(str(value), 16)
        return value

    def out(self, now: int) -> bool:
        if not self.armed:
            return self.mode != 0  # after a control word OUT is low only in mode 0
        if not self.running():
            return True  # modes 1/5 idle high until triggered
        if not self.gate and self.mode in (2, 3):
            return True  # a low gate forces OUT high in modes 2 and 3
        d = self.elapsed(now)
        count = self.count
        mode = self.mode
        if mode in (0, 1):
            return d >= count
        if mode == 2:
            return count == 1 or d % count != count - 1
        if mode == 3:
            return d % count < (count + 1) >> 1
        return d != count  # modes 4 and 5: one-clock low strobe at terminal count

    def rising_edges(self, d0: int, d1: int) -> int:
        """OUT rising edges in the clock interval (d0, d1]."""
        if not self.running() or d1 <= d0:
            return 0
        count = self.count
        mode = self.mode
        if mode in (0, 1):
            return 1 if d0 < count <= d1 else 0
        if mode in (2, 3):
            return d1 // count - d0 // count
        return 1 if d0 < count + 1 <= d1 else 0

    def next_rising_edge(self, d: int) -> Optional[int]:
        """Clock count of the first OUT rising edge after `d`, or None."""
        if not self.running() or self._frozen:
            return None
        count = self.count
        mode = self.mode
        if mode in (0, 1):
            return count if d < count else None
        if mode in (2, 3):
            return (d // count + 1) * count
        return count + 1 if d < count + 1 else None

    def time_of(self, d: int) -> int:
        """Clock time at which elapsed() reaches `d` (the channel must be running)."""
        return self._start_ns + _ticks_to_ns(d - self._base)


class SystemControlPortB:
    """Port 0x61: timer 2 gate and speaker enable (write), OUT2 and refresh (read)."""

    def __init__(self, pit: I8254Pit) -> None:
        self._pit = pit
        self._value = 0

    def read(self, offset: int, size: int) -> int:
        if offset != 0:
            return 0xFF
        now = self._pit.clock.now_ns()
        value = self._value & PORTB_WRITABLE
        if (now // REFRESH_TOGGLE_NS) & 1:
            value |= PORTB_REFRESH
        if self._pit.out(2):
            value |= PORTB_OUT2
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return
        self._value = value & PORTB_WRITABLE
        self._pit.set_gate(2, bool(value & PORTB_GATE2))


class I8254Pit:
    """Three channels at offsets 0-2, control word at 3; channel 0 drives `irq0`."""

    def __init__(self, irq0: IrqLine, clock: Clock) -> None:
        self._irq0 = irq0
        self.clock = clock
        # Channels 0 and 1 have GATE tied high on a PC; channel 2's comes from port 0x61.
        self._channels = (_Channel(True), _Channel(True), _Channel(False))
        self._irq_level = False
        self._last_tick_ns = clock.now_ns()

    # --- BusDevice -------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if not 0 <= offset < PIT_CHANNELS:
            return 0xFF if offset != OFFSET_CONTROL else 0x00  # the control word is write-only
        ch = self._channels[offset]
        if ch.status is not None:
            status, ch.status = ch.status, None
            return status
        if ch.latched:
            return ch.latched.pop(0)
        value = ch.counter(self.clock.now_ns())
        if ch.rw_mode == RW_MSB:
            return value >> 8
        if ch.rw_mode == RW_WORD:
            ch.read_word1 = not ch.read_word1
            if not ch.read_word1:
                return value >> 8
        return value & 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == OFFSET_CONTROL:
            self._write_control(value)
        elif 0 <= offset < PIT_CHANNELS:
            self._write_count(offset, value)

    def _write_control(self, value: int) -> None:
        now = self.clock.now_ns()
        select = value >> PIT_SC_SHIFT
        if select == PIT_READ_BACK:
            for index, ch in enumerate(self._channels):
                if not value & (2 << index):
                    continue
                if not value & PIT_RB_NO_COUNT:
                    self._latch(ch, now)
                if not value & PIT_RB_NO_STATUS and ch.status is None:
                    status = (ch.rw_mode << PIT_RW_SHIFT) | (ch.mode << PIT_MODE_SHIFT) | int(ch.bcd)
                    if ch.out(now):
                        status |= PIT_STATUS_OUT
                    if not ch.armed:
                        status |= PIT_STATUS_NULL_COUNT
                    ch.status = status
            return
        ch = self._channels[select]
        access = (value >> PIT_RW_SHIFT) & 3
        if access == RW_LATCH:
            self._latch(ch, now)
            return
        if select == 0:
            self._catch_up(now)
        mode = (value >> PIT_MODE_SHIFT) & 7
        ch.mode = mode - 4 if mode >= 6 else mode  # 6 and 7 are 2 and 3
        ch.rw_mode = access
        ch.bcd = bool(value & PIT_BCD)
        ch.armed = False
        ch.triggered = False
        ch.read_word1 = ch.write_word1 = False
        ch.latched = []
        if select == 0:
            self._update_irq(now, edges=0)

    def _latch(self, ch: _Channel, now: int) -> None:
        if ch.latched:
            return  # a second latch before the first is read is ignored
        value = ch.counter(now)
        if ch.rw_mode == RW_LSB:
            ch.latched = [value & 0xFF]
        elif ch.rw_mode == RW_MSB:
            ch.latched = [value >> 8]
        else:
            ch.latched = [value & 0xFF, value >> 8]

    def _write_count(self, index: int, value: int) -> None:
        ch = self._channels[index]
        if ch.rw_mode == RW_WORD and not ch.write_word1:
            ch.write_lsb = value
            ch.write_word1 = True
            return
        if ch.rw_mode == RW_MSB:
            raw = value << 8
        elif ch.rw_mode == RW_WORD:
            raw = ch.write_lsb | (value << 8)
            ch.write_word1 = False
        else:
            raw = value
        now = self.clock.now_ns()
        if index == 0:
            self._catch_up(now)
        if ch.bcd:
            raw = ((raw >> 12) & 0xF) * 1000 + ((raw >> 8) & 0xF) * 100 + ((raw >> 4) & 0xF) * 10 + (raw & 0xF)
            ch.count = raw or 10000
        else:
            ch.count = raw or 0x10000
        ch.armed = True
        ch.triggered = False
        ch.restart(now)
        if index == 0:
            self._update_irq(now, edges=0)

    # --- gate and OUT ------------------------------------------------------------------
    def set_gate(self, channel: int, level: bool) -> None:
        """Drive GATE of `channel` (port 0x61 bit 0 drives channel 2)."""
        if not 0 <= channel < PIT_CHANNELS:
            return
        now = self.clock.now_ns()
        if channel == 0:
            self._catch_up(now)
        self._channels[channel].set_gate(now, level)
        if channel == 0:
            self._update_irq(now, edges=0)

    def out(self, channel: int) -> bool:
        """OUT level of `channel` now."""
        if not 0 <= channel < PIT_CHANNELS:
            return False
        return self._channels[channel].out(self.clock.now_ns())

    # --- timed-device protocol -------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        """Bring IRQ 0 up to date with channel 0's OUT at `now_ns`."""
        self._catch_up(now_ns)

    def next_deadline(self) -> Optional[int]:
        """Clock time of channel 0's next OUT rising edge, or None."""
        ch = self._channels[0]
        edge = ch.next_rising_edge(ch.elapsed(self._last_tick_ns))
        if edge is None:
            return None
        return max(ch.time_of(edge), self._last_tick_ns + 1)

    def _catch_up(self, now: int) -> None:
        if now < self._last_tick_ns:
            return
        ch = self._channels[0]
        edges = ch.rising_edges(ch.elapsed(self._last_tick_ns), ch.elapsed(now))
        self._update_irq(now, edges)

    def _update_irq(self, now: int, edges: int) -> None:
        """Set IRQ 0 to OUT0's level, pulsing it when a rising edge happened in between."""
        self._last_tick_ns = max(now, self._last_tick_ns)
        level = self._channels[0].out(now)
        if edges:
            if self._irq_level:
                self._irq0.set_level(False)
            self._irq0.set_level(True)
            self._irq_level = True
        if level != self._irq_level:
            self._irq_level = level
            self._irq0.set_level(level)
