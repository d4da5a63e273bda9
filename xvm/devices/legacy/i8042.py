"""The 8042 keyboard controller: enough for Linux to probe it and to reset the PC.

A PC's keyboard controller answers at two ports: data at 0x60, status
(read) / command (write) at 0x64. Port 0x61 sits between them and belongs to
another device (system control port B, see i8254_pit.py), so the controller
cannot be mapped as one window. It offers a BusDevice per port instead:

    kbc = I8042(machine.request_reset, kbd_irq=pio_irq(1))
    pio.insert(kbc.data_port, PORT_I8042_DATA, 1)
    pio.insert(kbc.command_port, PORT_I8042_CMD, 1)

(`kbc.read/write` also accept offsets 0 = data and 4 = command, the layout of
a 5-byte window at 0x60, for callers that want one object.)

What is modelled (QEMU hw/input/pckbd.c, Linux drivers/input/serio/i8042.c):
controller commands read/write command byte (0x20/0x60), self-test
(0xAA -> 0x55), interface tests (0xAB/0xA9 -> 0x00), disable/enable keyboard
and aux ports, read/write output port (0xD0/0xD1: bit 0 clear resets the
CPU, bit 1 is the A20 gate), write to the keyboard or aux output buffer
(0xD2/0xD3) and pulse output lines (0xF0-0xFF: 0xFE pulses reset, what
Linux's reboot=k does). A keyboard with no keys pressed answers the atkbd
probe (reset, identify, LEDs, scancode set). No mouse is attached: bytes for
it (0xD4) go nowhere, as on a PC without one.
"""

from __future__ import annotations

import collections
from typing import Callable, Optional

from xvm.bus.irq import IrqLine, NullIrqLine

OFFSET_DATA = 0  # port 0x60
OFFSET_COMMAND = 4  # port 0x64

# Status register (read at 0x64).
I8042_STR_OBF = 0x01  # output buffer full: data waiting at 0x60
I8042_STR_IBF = 0x02  # input buffer full: controller busy (never, here)
I8042_STR_SYSFLAG = 0x04  # system flag: set by a passed self-test
I8042_STR_CMDDAT = 0x08  # last write went to the command port
I8042_STR_KEYLOCK = 0x10  # 1 = keyboard not inhibited
I8042_STR_AUXDATA = 0x20  # the byte in the output buffer is from the aux port

# Command byte ("controller RAM" byte 0).
I8042_CTR_KBDINT = 0x01  # IRQ1 on keyboard data
I8042_CTR_AUXINT = 0x02  # IRQ12 on aux data
I8042_CTR_SYS = 0x04  # system flag mirror
I8042_CTR_KBDDIS = 0x10  # keyboard clock disabled
I8042_CTR_AUXDIS = 0x20  # aux clock disabled
I8042_CTR_XLATE = 0x40  # translate to scancode set 1

# Controller commands (written to 0x64).
I8042_CMD_CTL_RCTR = 0x20  # read command byte
I8042_CMD_CTL_WCTR = 0x60  # write command byte (next data byte)
I8042_CMD_AUX_DISABLE = 0xA7
I8042_CMD_AUX_ENABLE = 0xA8
I8042_CMD_AUX_TEST = 0xA9  # aux interface test: 0x00 = ok
I8042_CMD_CTL_TEST = 0xAA  # controller self-test: 0x55 = ok
I8042_CMD_KBD_TEST = 0xAB  # keyboard interface test: 0x00 = ok
I8042_CMD_KBD_DISABLE = 0xAD
I8042_CMD_KBD_ENABLE = 0xAE
I8042_CMD_READ_INPUT = 0xC0  # read input port
I8042_CMD_READ_OUTPUT = 0xD0  # read output port
I8042_CMD_WRITE_OUTPUT = 0xD1  # write output port (next data byte)
I8042_CMD_KBD_LOOP = 0xD2  # next data byte appears as keyboard data
I8042_CMD_AUX_LOOP = 0xD3  # next data byte appears as aux data
I8042_CMD_AUX_SEND = 0xD4  # next data byte goes to the aux device
I8042_CMD_READ_TEST = 0xE0  # read test inputs
I8042_CMD_PULSE_BASE = 0xF0  # 0xF0-0xFF: pulse output port bits 3:0 low

# Output port bits.
I8042_OUT_RESET = 0x01  # CPU reset line, active low
I8042_OUT_A20 = 0x02  # A20 gate
I8042_OUT_KBD_OBF = 0x10  # mirrors "keyboard byte waiting"
I8042_OUT_AUX_OBF = 0x20  # mirrors "aux byte waiting"

# Keyboard (PS/2 device) commands and replies (Linux drivers/input/keyboard/atkbd.c).
ATKBD_CMD_SETLEDS = 0xED
ATKBD_CMD_ECHO = 0xEE
ATKBD_CMD_SSCANSET = 0xF0
ATKBD_CMD_GETID = 0xF2
ATKBD_CMD_SETREP = 0xF3
ATKBD_CMD_RESET_BAT = 0xFF
ATKBD_RET_ACK = 0xFA
ATKBD_RET_BAT = 0xAA  # basic assurance test passed
ATKBD_ID = (0xAB, 0x83)  # MF2 keyboard
#: Keyboard commands that take one argument byte (acknowledged too).
ATKBD_ARG_COMMANDS = (ATKBD_CMD_SETLEDS, ATKBD_CMD_SSCANSET, ATKBD_CMD_SETREP)

#: Output queue depth; a misbehaving guest cannot grow it without bound.
OUTPUT_QUEUE_SIZE = 16


class _Port:
    """One of the controller's two ports as its own BusDevice (offset 0 only)."""

    def __init__(self, controller: I8042, offset: int) -> None:
        self._controller = controller
        self._offset = offset

    def read(self, offset: int, size: int) -> int:
        if offset != 0:
            return 0xFF
        return self._controller.read(self._offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self._controller.write(self._offset, size, value)


class I8042:
    """PS/2 controller with a keyboard that never types; reset through on_reset()."""

    def __init__(
        self,
        on_reset: Callable[[], None],
        kbd_irq: Optional[IrqLine] = None,
        aux_irq: Optional[IrqLine] = None,
        on_a20: Optional[Callable[[bool], None]] = None,
    ) -> None:
        self._on_reset = on_reset
        self._kbd_irq = kbd_irq if kbd_irq is not None else NullIrqLine()
        self._aux_irq = aux_irq if aux_irq is not None else NullIrqLine()
        self._on_a20 = on_a20
        self._queue: collections.deque = collections.deque()  # (byte, from_aux)
        self._ctr = I8042_CTR_KBDINT | I8042_CTR_AUXINT | I8042_CTR_XLATE
        self._status = I8042_STR_KEYLOCK
        self._output_port = I8042_OUT_RESET | I8042_OUT_A20
        self._pending_cmd = 0  # controller command waiting for its data byte
        self._kbd_pending = 0  # keyboard command waiting for its argument
        self._kbd_irq_level = False
        self._aux_irq_level = False
        self.data_port = _Port(self, OFFSET_DATA)
        self.command_port = _Port(self, OFFSET_COMMAND)

    @property
    def a20_enabled(self) -> bool:
        """The A20 gate as the output port sets it."""
        return bool(self._output_port & I8042_OUT_A20)

    # --- BusDevice -------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == OFFSET_DATA:
            return self._read_data()
        if offset == OFFSET_COMMAND:
            return self._read_status()
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == OFFSET_DATA:
            self._status &= ~I8042_STR_CMDDAT
            self._write_data(value)
        elif offset == OFFSET_COMMAND:
            self._status |= I8042_STR_CMDDAT
            self._write_command(value)
        self._update_irqs()

    # --- registers -------------------------------------------------------------
    def _read_status(self) -> int:
        status = self._status
        if self._queue:
            status |= I8042_STR_OBF
            if self._queue[0][1]:
                status |= I8042_STR_AUXDATA
        return status

    def _read_data(self) -> int:
        if not self._queue:
            return 0x00
        value, _ = self._queue.popleft()
        # Reading empties the output buffer, so IRQ 1/12 drop; the next queued
        # byte raises them again, a fresh edge for the PIC. Linux's
        # i8042_interrupt() takes one byte per interrupt and relies on it.
        self._set_irqs(False, False)
        self._update_irqs()
        return value

    def _write_command(self, cmd: int) -> None:
        self._pending_cmd = 0
        if cmd == I8042_CMD_CTL_RCTR:
            self._push(self._ctr)
        elif cmd in (I8042_CMD_CTL_WCTR, I8042_CMD_WRITE_OUTPUT, I8042_CMD_KBD_LOOP,
                     I8042_CMD_AUX_LOOP, I8042_CMD_AUX_SEND):
            self._pending_cmd = cmd
        elif cmd == I8042_CMD_AUX_DISABLE:
            self._ctr |= I8042_CTR_AUXDIS
        elif cmd == I8042_CMD_AUX_ENABLE:
            self._ctr &= ~I8042_CTR_AUXDIS
        elif cmd in (I8042_CMD_AUX_TEST, I8042_CMD_KBD_TEST):
            self._push(0x00)
        elif cmd == I8042_CMD_CTL_TEST:
            self._status |= I8042_STR_SYSFLAG
            self._push(0x55)
        elif cmd == I8042_CMD_KBD_DISABLE:
            self._ctr |= I8042_CTR_KBDDIS
        elif cmd == I8042_CMD_KBD_ENABLE:
            self._ctr &= ~I8042_CTR_KBDDIS
        elif cmd == I8042_CMD_READ_INPUT:
            self._push(0x80)  # bit 7: keyboard not inhibited
        elif cmd == I8042_CMD_READ_OUTPUT:
            port = self._output_port & ~(I8042_OUT_KBD_OBF | I8042_OUT_AUX_OBF)
            if self._queue:
                port |= I8042_OUT_AUX_OBF if self._queue[0][1] else I8042_OUT_KBD_OBF
            self._push(port)
        elif cmd == I8042_CMD_READ_TEST:
            self._push(0x00)
        elif cmd >= I8042_CMD_PULSE_BASE and not cmd & I8042_OUT_RESET:
            # Pulsing output bit 0 low pulses the CPU reset line (0xFE).
            self._on_reset()
        # Other commands (vendor specific, password, ...) are ignored.

    def _write_data(self, value: int) -> None:
        cmd, self._pending_cmd = self._pending_cmd, 0
        if cmd == I8042_CMD_CTL_WCTR:
            self._ctr = value
            if value & I8042_CTR_SYS:
                self._status |= I8042_STR_SYSFLAG
            else:
                self._status &= ~I8042_STR_SYSFLAG
        elif cmd == I8042_CMD_WRITE_OUTPUT:
            self._write_output_port(value)
        elif cmd == I8042_CMD_KBD_LOOP:
            self._push(value)
        elif cmd == I8042_CMD_AUX_LOOP:
            self._push(value, from_aux=True)
        elif cmd == I8042_CMD_AUX_SEND:
            pass  # no mouse attached: the byte goes nowhere
        else:
            self._keyboard_command(value)

    def _write_output_port(self, value: int) -> None:
        old = self._output_port
        self._output_port = value
        if (old ^ value) & I8042_OUT_A20 and self._on_a20 is not None:
            self._on_a20(bool(value & I8042_OUT_A20))
        if not value & I8042_OUT_RESET:
            self._on_reset()

    def _keyboard_command(self, value: int) -> None:
        """A byte for the keyboard itself (atkbd's ps2_command)."""
        if self._kbd_pending:
            self._kbd_pending = 0
            self._push(ATKBD_RET_ACK)
        elif value == ATKBD_CMD_ECHO:
            self._push(ATKBD_CMD_ECHO)
        elif value == ATKBD_CMD_RESET_BAT:
            self._push(ATKBD_RET_ACK)
            self._push(ATKBD_RET_BAT)
        elif value == ATKBD_CMD_GETID:
            self._push(ATKBD_RET_ACK)
            for byte in ATKBD_ID:
                self._push(byte)
        else:
            if value in ATKBD_ARG_COMMANDS:
                self._kbd_pending = value
            self._push(ATKBD_RET_ACK)

    def _push(self, value: int, from_aux: bool = False) -> None:
        if len(self._queue) < OUTPUT_QUEUE_SIZE:
            self._queue.append((value & 0xFF, from_aux))

    def _update_irqs(self) -> None:
        head_aux = self._queue[0][1] if self._queue else None
        self._set_irqs(
            head_aux is False and bool(self._ctr & I8042_CTR_KBDINT),
            head_aux is True and bool(self._ctr & I8042_CTR_AUXINT),
        )

    def _set_irqs(self, kbd: bool, aux: bool) -> None:
        if kbd != self._kbd_irq_level:
            self._kbd_irq_level = kbd
            self._kbd_irq.set_level(kbd)
        if aux != self._aux_irq_level:
            self._aux_irq_level = aux
            self._aux_irq.set_level(aux)
