"""The I/O APIC at 0xFEC00000: 24 input pins turned into APIC bus messages.

Registers are reached indirectly (Intel 82093AA datasheet, section 3): the
guest writes a register number to IOREGSEL (offset 0x00) and reads or writes
its value through IOWIN (offset 0x10). Register 0 is the ID, 1 the version
(0x11, 24 pins: what KVM and QEMU report), 2 the arbitration ID, and
0x10 + 2n / 0x11 + 2n the low and high halves of pin n's redirection entry:
vector, delivery mode, destination mode, polarity, trigger mode, mask and
the destination APIC ID, plus the read-only delivery-status and remote-IRR
bits.

An edge-triggered pin sends one message per rising edge while unmasked
(edges on a masked pin are lost, as the datasheet says). A level-triggered
pin sends a message while asserted and sets remote IRR; nothing more is sent
until the LAPIC that took it signals EOI for that vector (`eoi()`), after
which a still-asserted line is delivered again. IrqLine levels mean
"asserted": the polarity bit is stored for the guest but, as in KVM and QEMU,
does not invert the line.

    ioapic = IoApic(deliver=router.route)
    mmio.insert(ioapic, IOAPIC_START, IOAPIC_MMIO_SIZE)
    ioapic.set_irq(4, True)
"""

from __future__ import annotations

from typing import Callable

from xvm.devices.legacy.lapic import ApicMessage

IOAPIC_MMIO_SIZE = 0x20  # IOREGSEL, IOWIN (the 0x40 EOI register is version 0x20 only)
IOAPIC_NUM_PINS = 24

OFFSET_IOREGSEL = 0x00
OFFSET_IOWIN = 0x10

IOAPIC_REG_ID = 0x00  # bits 27:24
IOAPIC_REG_VERSION = 0x01
IOAPIC_REG_ARB = 0x02
IOAPIC_REG_REDTBL = 0x10  # 0x10-0x3F: two 32-bit halves per pin
#: Version 0x11 with (pins - 1) in bits 23:16.
IOAPIC_VERSION = 0x11 | ((IOAPIC_NUM_PINS - 1) << 16)

# Redirection entry bits.
IOAPIC_LVT_DELIV_MODE_SHIFT = 8
IOAPIC_LVT_DEST_MODE = 1 << 11  # 1 = logical
IOAPIC_LVT_DELIV_STATUS = 1 << 12  # read-only: never set, delivery is instant
IOAPIC_LVT_POLARITY = 1 << 13
IOAPIC_LVT_REMOTE_IRR = 1 << 14  # read-only: level interrupt accepted, EOI awaited
IOAPIC_LVT_TRIGGER_LEVEL = 1 << 15
IOAPIC_LVT_MASKED = 1 << 16
IOAPIC_RO_BITS = IOAPIC_LVT_REMOTE_IRR | IOAPIC_LVT_DELIV_STATUS
IOAPIC_DEST_SHIFT = 56
#: Low-half bits a guest may set (vector through mask; bits 31:17 are reserved).
IOAPIC_LOW_WRITABLE = 0x1FFFF & ~IOAPIC_RO_BITS
IOAPIC_HIGH_WRITABLE = 0xFF000000


class IoApic:
    """24-pin IOAPIC; `deliver` puts a message on the APIC bus."""

    def __init__(self, deliver: Callable[[ApicMessage], None]) -> None:
        self._deliver = deliver
        self._regsel = 0
        self._id = 0
        self._redtbl = [IOAPIC_LVT_MASKED] * IOAPIC_NUM_PINS
        self._levels = 0  # asserted input lines
        self._irr = 0  # requests not yet delivered

    def redirection(self, pin: int) -> int:
        """Pin `pin`'s 64-bit redirection entry (for tests and the snapshot code)."""
        return self._redtbl[pin]

    # --- inputs ----------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        """Drive input `pin`; out-of-range pins are ignored."""
        if not 0 <= pin < IOAPIC_NUM_PINS:
            return
        mask = 1 << pin
        was = self._levels & mask
        if level:
            self._levels |= mask
        else:
            self._levels &= ~mask
        entry = self._redtbl[pin]
        if entry & IOAPIC_LVT_TRIGGER_LEVEL:
            if level:
                self._irr |= mask
                self._service(pin)
            else:
                self._irr &= ~mask
        elif level and not was and not entry & IOAPIC_LVT_MASKED:
            self._irr |= mask
            self._service(pin)

    def eoi(self, vector: int) -> None:
        """A LAPIC finished a level-triggered `vector`: clear remote IRR, resend if still asserted."""
        for pin, entry in enumerate(self._redtbl):
            if entry & 0xFF != vector or not entry & IOAPIC_LVT_REMOTE_IRR:
                continue
            self._redtbl[pin] = entry & ~IOAPIC_LVT_REMOTE_IRR
            if self._levels & (1 << pin):
                self._irr |= 1 << pin
            self._service(pin)

    def _service(self, pin: int) -> None:
        mask = 1 << pin
        entry = self._redtbl[pin]
        if not self._irr & mask or entry & IOAPIC_LVT_MASKED:
            return
        level = bool(entry & IOAPIC_LVT_TRIGGER_LEVEL)
        if level:
            if entry & IOAPIC_LVT_REMOTE_IRR:
                return
            self._redtbl[pin] = entry | IOAPIC_LVT_REMOTE_IRR
        self._irr &= ~mask
        self._deliver(
            ApicMessage(
                vector=entry & 0xFF,
                delivery_mode=(entry >> IOAPIC_LVT_DELIV_MODE_SHIFT) & 7,
                logical=bool(entry & IOAPIC_LVT_DEST_MODE),
                destination=(entry >> IOAPIC_DEST_SHIFT) & 0xFF,
                level_triggered=level,
            )
        )

    # --- MMIO --------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == OFFSET_IOREGSEL:
            return self._regsel
        if offset == OFFSET_IOWIN:
            return self._read_register(self._regsel) & ((1 << (8 * size)) - 1)
        return 0xFFFFFFFF & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == OFFSET_IOREGSEL:
            self._regsel = value & 0xFF
        elif offset == OFFSET_IOWIN and size == 4:
            self._write_register(self._regsel, value & 0xFFFFFFFF)

    def _read_register(self, reg: int) -> int:
        if reg == IOAPIC_REG_ID:
            return self._id << 24
        if reg == IOAPIC_REG_VERSION:
            return IOAPIC_VERSION
        if reg == IOAPIC_REG_ARB:
            return self._id << 24
        pin = (reg - IOAPIC_REG_REDTBL) >> 1
        if reg < IOAPIC_REG_REDTBL or pin >= IOAPIC_NUM_PINS:
            return 0xFFFFFFFF  # no such register: the window floats
        entry = self._redtbl[pin]
        return (entry >> 32) & 0xFFFFFFFF if reg & 1 else entry & 0xFFFFFFFF

    def _write_register(self, reg: int, value: int) -> None:
        if reg == IOAPIC_REG_ID:
            self._id = (value >> 24) & 0xF
            return
        pin = (reg - IOAPIC_REG_REDTBL) >> 1
        if reg < IOAPIC_REG_REDTBL or pin >= IOAPIC_NUM_PINS:
            return  # version, arbitration and nonexistent registers are read-only
        entry = self._redtbl[pin]
        if reg & 1:
            entry = (entry & 0xFFFFFFFF) | ((value & IOAPIC_HIGH_WRITABLE) << 32)
        else:
            entry = (entry & ~0xFFFFFFFF) | (entry & IOAPIC_RO_BITS) | (value & IOAPIC_LOW_WRITABLE)
            if not entry & IOAPIC_LVT_TRIGGER_LEVEL:
                entry &= ~IOAPIC_LVT_REMOTE_IRR  # switching to edge drops a stale remote IRR (as QEMU)
        self._redtbl[pin] = entry
        if entry & IOAPIC_LVT_TRIGGER_LEVEL and self._levels & (1 << pin):
            self._irr |= 1 << pin  # an asserted level line is delivered once unmasked
        self._service(pin)
