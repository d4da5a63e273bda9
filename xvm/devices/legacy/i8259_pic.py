"""The PC's pair of 8259A interrupt controllers (ISA IRQs 0-15) plus the ELCR.

The master at 0x20/0x21 takes IRQs 0-7; the slave at 0xA0/0xA1 takes 8-15
and signals the master on its IR2 (cascade). The CPU sees the master's INTR
output; `acknowledge()` is the INTA cycle that returns the vector and moves
the request from IRR to ISR. Behaviour follows the 8259A datasheet and
QEMU's hw/intc/i8259.c: initialization words ICW1-4, OCW1 (mask), OCW2
(non-specific/specific EOI, rotation), OCW3 (read IRR/ISR, poll, special
mask), auto-EOI with optional rotation, special fully nested mode, and a
spurious IRQ 7 (or 15) when a request vanished before INTA.

Edge or level sensitivity per pin comes from the ELCR pair at 0x4D0/0x4D1
(Intel PIIX/ICH); IRQs 0, 1, 2, 8 and 13 are always edge-triggered there.

    pic = I8259Pair(intr=cpu_intr_line)
    pio.insert(pic.master, PORT_I8259_MASTER, 2)
    pio.insert(pic.slave, PORT_I8259_SLAVE, 2)
    pio.insert(pic.elcr, PORT_ELCR, 2)
    pic.set_irq(4, True)                 # the UART raises IRQ 4
    if pic.has_interrupt():
        vector = pic.acknowledge()
"""

from __future__ import annotations

from typing import Callable, Optional

from xvm.bus.irq import IrqLine

OFFSET_COMMAND = 0  # 0x20 / 0xA0: ICW1, OCW2, OCW3; reads IRR/ISR
OFFSET_DATA = 1  # 0x21 / 0xA1: ICW2-4, OCW1 (IMR)

ICW1_INIT = 0x10  # bit 4 distinguishes ICW1 from OCW2/OCW3
ICW1_IC4 = 0x01  # ICW4 follows
ICW1_SNGL = 0x02  # single controller: no ICW3
ICW1_LTIM = 0x08  # level-triggered mode for every pin
OCW3_SELECT = 0x08  # bit 3 distinguishes OCW3 from OCW2
OCW3_POLL = 0x04  # poll command: next read acknowledges
OCW3_RR = 0x02  # read register command follows in bit 0
OCW3_RIS = 0x01  # 1 = read ISR, 0 = read IRR
OCW3_ESMM = 0x40  # special mask mode bit (bit 5) is valid
OCW3_SMM = 0x20
ICW4_AEOI = 0x02  # automatic EOI at INTA
ICW4_SFNM = 0x10  # special fully nested mode

# OCW2 commands (bits 7:5).
OCW2_ROTATE_AEOI_CLEAR = 0
OCW2_EOI = 1  # non-specific EOI
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_AEOI_SET = 4
OCW2_ROTATE_EOI = 5  # non-specific EOI and rotate
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7

CASCADE_IRQ = 2  # the slave's INT feeds the master's IR2
SPURIOUS_IRQ = 7
#: ELCR bits that can be set; the rest are edge-only (PIIX4 datasheet 4.1.11).
ELCR_MASK_MASTER = 0xF8
ELCR_MASK_SLAVE = 0xDE


class I8259:
    """One 8259A; `output` follows its INT pin."""

    def __init__(self, is_master: bool, output: Callable[[bool], None], elcr_mask: int) -> None:
        self.is_master = is_master
        self._output = output
        self.elcr_mask = elcr_mask
        self.elcr = 0  # edge/level control, written through the ELCR ports
        self._levels = 0  # current input pin levels
        self._int_level = False
        self._reset_state()

    def _reset_state(self) -> None:
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.irq_base = 0
        self._priority_add = 0  # pin with the highest priority
        self._read_isr = False
        self._poll = False
        self._special_mask = False
        self._init_state = 0  # which ICW the data port expects next (0 = none)
        self._init4 = False
        self._single = False
        self._ltim = False
        self._auto_eoi = False
        self._rotate_on_auto_eoi = False
        self._sfnm = False
        # A pin that is already high needs a fresh rising edge after ICW1;
        # a level-triggered one keeps requesting.
        self._edge_seen = self._levels
        self.irr = self._levels & self._level_pins()

    def _level_pins(self) -> int:
        return 0xFF if self._ltim else self.elcr

    # --- priority logic (QEMU pic_get_irq) ---------------------------------------
    def _priority(self, mask: int) -> int:
        """Priority rank (0 = highest) of the best pin in `mask`; 8 when none."""
        if not mask:
            return 8
        rank = 0
        while not mask & (1 << ((rank + self._priority_add) & 7)):
            rank += 1
        return rank

    def pending_irq(self) -> int:
        """The pin the chip would present at INTA, or -1."""
        rank = self._priority(self.irr & ~self.imr)
        if rank == 8:
            return -1
        in_service = self.isr
        if self._special_mask:
            in_service &= ~self.imr
        if self._sfnm and self.is_master:
            # Special fully nested: more slave requests may nest over IR2.
            in_service &= ~(1 << CASCADE_IRQ)
        if rank < self._priority(in_service):
            return (rank + self._priority_add) & 7
        return -1

    def _update(self) -> None:
        level = self.pending_irq() >= 0
        if level != self._int_level:
            self._int_level = level
            self._output(level)

    def set_pin(self, pin: int, level: bool) -> None:
        """Drive input IR`pin` (0-7)."""
        mask = 1 << pin
        if level:
            self._levels |= mask
        else:
            self._levels &= ~mask
        if self._level_pins() & mask:
            if level:
                self.irr |= mask
            else:
                self.irr &= ~mask
        elif level:
            if not self._edge_seen & mask:
                self.irr |= mask
            self._edge_seen |= mask
        else:
            self._edge_seen &= ~mask
        self._update()

    def intack(self, pin: int) -> None:
        """The INTA cycle for `pin`: IRR -> ISR (or auto-EOI)."""
        mask = 1 << pin
        if self._auto_eoi:
            if self._rotate_on_auto_eoi:
                self._priority_add = (pin + 1) & 7
        else:
            self.isr |= mask
        if not self._level_pins() & mask:
            self.irr &= ~mask  # a level request stays until the device drops it
        self._update()

    # --- BusDevice -----------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset > OFFSET_DATA:
            return 0xFF
        if self._poll:
            # Poll mode: the read is the INTA; bit 7 says whether there was one.
            self._poll = False
            pin = self.pending_irq()
            if pin < 0:
                return 0
            self.intack(pin)
            return 0x80 | pin
        if offset == OFFSET_COMMAND:
            return self.isr if self._read_isr else self.irr
        return self.imr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == OFFSET_COMMAND:
            if value & ICW1_INIT:
                self._write_icw1(value)
            elif value & OCW3_SELECT:
                self._write_ocw3(value)
            else:
                self._write_ocw2(value)
        elif offset == OFFSET_DATA:
            self._write_data(value)

    def _write_icw1(self, value: int) -> None:
        self._reset_state()
        self._init_state = 1
        self._init4 = bool(value & ICW1_IC4)
        self._single = bool(value & ICW1_SNGL)
        self._ltim = bool(value & ICW1_LTIM)
        self.irr = self._levels & self._level_pins()
        self._update()

    def _write_ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self._poll = True
        if value & OCW3_RR:
            self._read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self._special_mask = bool(value & OCW3_SMM)
        self._update()

    def _write_ocw2(self, value: int) -> None:
        cmd = value >> 5
        if cmd in (OCW2_ROTATE_AEOI_CLEAR, OCW2_ROTATE_AEOI_SET):
            self._rotate_on_auto_eoi = cmd == OCW2_ROTATE_AEOI_SET
        elif cmd in (OCW2_EOI, OCW2_ROTATE_EOI):
            rank = self._priority(self.isr)
            if rank != 8:
                pin = (rank + self._priority_add) & 7
                self.isr &= ~(1 << pin)
                if cmd == OCW2_ROTATE_EOI:
                    self._priority_add = (pin + 1) & 7
        elif cmd == OCW2_SPECIFIC_EOI:
            self.isr &= ~(1 << (value & 7))
        elif cmd == OCW2_SET_PRIORITY:
            self._priority_add = (value + 1) & 7
        elif cmd == OCW2_ROTATE_SPECIFIC_EOI:
            pin = value & 7
            self.isr &= ~(1 << pin)
            self._priority_add = (pin + 1) & 7
        # cmd 2 is a no-op
        self._update()

    def _write_data(self, value: int) -> None:
        state = self._init_state
        if state == 0:
            self.imr = value  # OCW1
            self._update()
        elif state == 1:
            self.irq_base = value & 0xF8  # ICW2: vector base, low 3 bits are the pin
            if not self._single:
                self._init_state = 2
            else:
                self._init_state = 3 if self._init4 else 0
        elif state == 2:
            self._init_state = 3 if self._init4 else 0  # ICW3: cascade wiring is fixed on a PC
        else:
            self._auto_eoi = bool(value & ICW4_AEOI)
            self._sfnm = bool(value & ICW4_SFNM)
            self._init_state = 0


class _Elcr:
    """The two edge/level control registers at 0x4D0 (master) and 0x4D1 (slave)."""

    def __init__(self, master: I8259, slave: I8259) -> None:
        self._chips = (master, slave)

    def read(self, offset: int, size: int) -> int:
        if offset > 1:
            return 0xFF
        return self._chips[offset].elcr

    def write(self, offset: int, size: int, value: int) -> None:
        if offset > 1:
            return
        chip = self._chips[offset]
        chip.elcr = value & chip.elcr_mask


class I8259Pair:
    """Master and slave 8259A wired as on a PC; INTR goes to `intr`."""

    def __init__(self, intr: Optional[IrqLine] = None) -> None:
        self._intr = intr
        self.intr_level = False
        self.master = I8259(True, self._set_intr, ELCR_MASK_MASTER)
        self.slave = I8259(False, self._cascade, ELCR_MASK_SLAVE)
        self.elcr = _Elcr(self.master, self.slave)

    def _cascade(self, level: bool) -> None:
        self.master.set_pin(CASCADE_IRQ, level)

    def _set_intr(self, level: bool) -> None:
        self.intr_level = level
        if self._intr is not None:
            self._intr.set_level(level)

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ `irq` (0-15); out-of-range numbers are ignored."""
        if 0 <= irq < 8:
            self.master.set_pin(irq, level)
        elif 8 <= irq < 16:
            self.slave.set_pin(irq - 8, level)

    def has_interrupt(self) -> bool:
        """True when INTR is asserted (a request beats everything in service)."""
        return self.master.pending_irq() >= 0

    def acknowledge(self) -> int:
        """INTA: the vector of the highest request; spurious IRQ 7/15 if it vanished."""
        master = self.master
        pin = master.pending_irq()
        if pin < 0:
            return master.irq_base + SPURIOUS_IRQ
        if pin == CASCADE_IRQ:
            slave = self.slave
            slave_pin = slave.pending_irq()
            if slave_pin >= 0:
                slave.intack(slave_pin)
            else:
                slave_pin = SPURIOUS_IRQ
            vector = slave.irq_base + slave_pin
        else:
            vector = master.irq_base + pin
        master.intack(pin)
        return vector
