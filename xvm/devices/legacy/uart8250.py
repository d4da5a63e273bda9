"""16550A UART (the PC's COM ports) as Linux's 8250 driver probes and drives it.

Eight byte registers; DLAB (LCR bit 7) swaps RBR/THR and IER for the divisor
latch. Transmission is instantaneous: a THR write goes straight to the
injected `output` callable (or, in loopback, into the receive FIFO), so THR
and the transmitter are always empty again when the guest looks (LSR.THRE and
LSR.TEMT set). Host input arrives through `receive()` from the console thread
into a bounded FIFO; whatever does not fit is refused and the caller retries,
so nothing is lost.

What Linux checks (drivers/tty/serial/8250/8250_port.c):
- autoconfig(): IER keeps only its low four bits; the scratch register holds a
  value; with MCR = LOOP|OUT2|RTS the MSR high nibble reads 0x90 (loopback
  wires RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD); after FCR = 1 the IIR bits
  7:6 read 11 (a 16550A with working FIFOs).
- serial8250_do_startup(): THRE must be re-raised when IER.ETBEI goes 0 -> 1
  while the transmitter is idle, or the port is marked UART_BUG_THRE and
  polled from a timer; an IIR read that reports THRE clears it.
- On a PC the interrupt output reaches the PIC only while MCR.OUT2 is set
  (and not in loopback, which forces OUT2 inactive: 16550D datasheet, MCR
  bit 4), which is why Linux sets OUT2 when it has an IRQ.

The receive interrupt fires as soon as one byte is waiting (trigger level 1):
Linux drains the FIFO until LSR.DR clears either way, and it avoids emulating
the character-timeout timer.

Lock order: the internal lock is held while calling `irq.set_level`; an
IrqLine must never call back into the UART.

    uart = Uart8250(irq_line, sys.stdout.buffer.write)
    pio.insert(uart, PORT_COM1, 8)
    uart.receive(b"ls\\n")          # from the console thread
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Optional

from xvm.bus.irq import IrqLine

# Register offsets (16550D datasheet table 2; Linux include/uapi/linux/serial_reg.h).
UART_RX = 0  # receive buffer (read, DLAB=0)
UART_TX = 0  # transmit holding register (write, DLAB=0)
UART_DLL = 0  # divisor latch low (DLAB=1)
UART_IER = 1  # interrupt enable (DLAB=0)
UART_DLM = 1  # divisor latch high (DLAB=1)
UART_IIR = 2  # interrupt identification (read)
UART_FCR = 2  # FIFO control (write)
UART_LCR = 3  # line control
UART_MCR = 4  # modem control
UART_LSR = 5  # line status
UART_MSR = 6  # modem status
UART_SCR = 7  # scratch

UART_IER_RDI = 0x01  # ERBFI: receive data available
UART_IER_THRI = 0x02  # ETBEI: transmit holding register empty
UART_IER_RLSI = 0x04  # ELSI: receiver line status
UART_IER_MSI = 0x08  # EDSSI: modem status
UART_IER_MASK = 0x0F  # bits 7:4 read as zero on a 16550A

UART_IIR_NO_INT = 0x01  # no interrupt pending
UART_IIR_MSI = 0x00  # modem status changed
UART_IIR_THRI = 0x02  # transmitter holding register empty
UART_IIR_RDI = 0x04  # receive data available
UART_IIR_RLSI = 0x06  # receiver line status (errors)
UART_IIR_FIFO_ENABLED = 0xC0  # bits 7:6 = 11: FIFOs enabled (16550A)

UART_FCR_ENABLE_FIFO = 0x01
UART_FCR_CLEAR_RCVR = 0x02
UART_FCR_CLEAR_XMIT = 0x04

UART_LCR_DLAB = 0x80  # divisor latch access bit

UART_MCR_DTR = 0x01
UART_MCR_RTS = 0x02
UART_MCR_OUT1 = 0x04
UART_MCR_OUT2 = 0x08  # gates the interrupt output on PCs
UART_MCR_LOOP = 0x10
UART_MCR_MASK = 0x1F

UART_LSR_DR = 0x01  # receiver data ready
UART_LSR_OE = 0x02  # overrun error
UART_LSR_BI = 0x10  # break interrupt
UART_LSR_THRE = 0x20  # transmit holding register empty
UART_LSR_TEMT = 0x40  # transmitter empty
UART_LSR_ERRORS = 0x1E  # OE | PE | FE | BI, cleared by reading LSR

UART_MSR_DCTS = 0x01  # delta CTS
UART_MSR_DDSR = 0x02  # delta DSR
UART_MSR_TERI = 0x04  # trailing edge of RI
UART_MSR_DDCD = 0x08  # delta DCD
UART_MSR_CTS = 0x10
UART_MSR_DSR = 0x20
UART_MSR_RI = 0x40
UART_MSR_DCD = 0x80
UART_MSR_DELTAS = 0x0F

#: A host-connected port: carrier, data set ready and clear to send asserted,
#: so a getty does not wait for carrier (as QEMU's and Firecracker's ports).
HOST_MODEM_LINES = UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS

#: Receive FIFO depth. A 16550A has 16; a deeper buffer (vm-superio uses 64)
#: lets the console thread hand over a typed line in one call.
RX_FIFO_SIZE = 64

#: Divisor 1 = 115200 baud (1.8432 MHz / 16); Linux's earlyprintk writes 1.
BAUD_BASE = 115200


class Uart8250:
    """One 16550A at eight consecutive ports (COM1 is 0x3F8, IRQ 4)."""

    def __init__(self, irq: IrqLine, output: Callable[[bytes], None]) -> None:
        self._irq = irq
        self._output = output
        self._lock = threading.Lock()
        self._rx: collections.deque = collections.deque()
        self._rbr = 0  # the last byte read stays in the holding register
        self._ier = 0
        self._fcr = 0
        self._lcr = 0x03  # 8N1 after reset
        self._mcr = 0
        self._lsr_errors = 0
        self._msr_deltas = 0
        self._scr = 0
        self._dll = 0x0C  # 9600 baud, the reset value firmware expects
        self._dlm = 0
        self._thr_pending = False  # THRE interrupt latched, not yet cleared
        self._irq_level = False
        self.bytes_out = 0
        self.bytes_in = 0

    # --- host side -----------------------------------------------------------
    def receive(self, data: bytes) -> int:
        """Queue host input; returns how many bytes fit (retry the rest later).

        In loopback the serial input is disconnected (16550D datasheet), so
        nothing is accepted until the guest leaves it.
        """
        with self._lock:
            if self._mcr & UART_MCR_LOOP:
                return 0
            room = RX_FIFO_SIZE - len(self._rx)
            taken = data[:room]
            self._rx.extend(taken)
            self.bytes_in += len(taken)
            if taken:
                self._update_irq()
            return len(taken)

    def rx_space(self) -> int:
        """Free bytes in the receive FIFO (the console thread polls before retrying)."""
        with self._lock:
            return 0 if self._mcr & UART_MCR_LOOP else RX_FIFO_SIZE - len(self._rx)

    @property
    def divisor(self) -> int:
        """The programmed baud divisor (baud = BAUD_BASE / divisor)."""
        return (self._dlm << 8) | self._dll

    # --- guest side ----------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            return self._read(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            out = self._write(offset, value & 0xFF)
        if out is not None:
            self._output(out)

    def _read(self, offset: int) -> int:
        dlab = self._lcr & UART_LCR_DLAB
        if offset == UART_RX:
            if dlab:
                return self._dll
            if self._rx:
                self._rbr = self._rx.popleft()
                self._update_irq()
            return self._rbr
        if offset == UART_IER:
            return self._dlm if dlab else self._ier
        if offset == UART_IIR:
            iir = self._interrupt_id()
            if iir == UART_IIR_THRI:
                # Reading IIR when it reports THRE clears that source (16550D, table 4).
                self._thr_pending = False
                self._update_irq()
            if self._fcr & UART_FCR_ENABLE_FIFO:
                iir |= UART_IIR_FIFO_ENABLED
            return iir
        if offset == UART_LCR:
            return self._lcr
        if offset == UART_MCR:
            return self._mcr
        if offset == UART_LSR:
            lsr = UART_LSR_THRE | UART_LSR_TEMT | self._lsr_errors
            if self._rx:
                lsr |= UART_LSR_DR
            if self._lsr_errors:
                self._lsr_errors = 0
                self._update_irq()
            return lsr
        if offset == UART_MSR:
            msr = self._modem_lines() | self._msr_deltas
            if self._msr_deltas:
                self._msr_deltas = 0
                self._update_irq()
            return msr
        if offset == UART_SCR:
            return self._scr
        return 0xFF  # outside the eight registers: nothing drives the bus

    def _write(self, offset: int, value: int) -> Optional[bytes]:
        dlab = self._lcr & UART_LCR_DLAB
        out = None
        if offset == UART_TX:
            if dlab:
                self._dll = value
                return None
            if self._mcr & UART_MCR_LOOP:
                self._loop_back(value)
            else:
                out = bytes((value,))
                self.bytes_out += 1
            # The byte leaves at once, so THR is empty again: THRE re-raised.
            self._thr_pending = True
        elif offset == UART_IER:
            if dlab:
                self._dlm = value
                return None
            old = self._ier
            self._ier = value & UART_IER_MASK
            if self._ier & UART_IER_THRI and not old & UART_IER_THRI:
                # Enabling ETBEI with an idle transmitter raises THRE at once;
                # Linux's UART_BUG_THRE test depends on it.
                self._thr_pending = True
        elif offset == UART_FCR:
            if (value ^ self._fcr) & UART_FCR_ENABLE_FIFO or value & UART_FCR_CLEAR_RCVR:
                # Toggling FIFO mode resets both FIFOs (16550D, FCR bit 0).
                self._rx.clear()
            self._fcr = value & ~(UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT)
        elif offset == UART_LCR:
            self._lcr = value
        elif offset == UART_MCR:
            before = self._modem_lines()
            self._mcr = value & UART_MCR_MASK
            after = self._modem_lines()
            changed = before ^ after
            if changed & UART_MSR_CTS:
                self._msr_deltas |= UART_MSR_DCTS
            if changed & UART_MSR_DSR:
                self._msr_deltas |= UART_MSR_DDSR
            if before & UART_MSR_RI and not after & UART_MSR_RI:
                self._msr_deltas |= UART_MSR_TERI
            if changed & UART_MSR_DCD:
                self._msr_deltas |= UART_MSR_DDCD
        elif offset == UART_SCR:
            self._scr = value
        # LSR and MSR are read-only; writes to them are ignored like on the chip.
        self._update_irq()
        return out

    # --- internals (called with the lock held) ---------------------------------
    def _loop_back(self, value: int) -> None:
        if len(self._rx) < RX_FIFO_SIZE:
            self._rx.append(value)
        else:
            self._lsr_errors |= UART_LSR_OE

    def _modem_lines(self) -> int:
        """MSR bits 7:4: the host lines, or MCR wired back in loopback."""
        mcr = self._mcr
        if not mcr & UART_MCR_LOOP:
            return HOST_MODEM_LINES
        lines = 0
        if mcr & UART_MCR_RTS:
            lines |= UART_MSR_CTS
        if mcr & UART_MCR_DTR:
            lines |= UART_MSR_DSR
        if mcr & UART_MCR_OUT1:
            lines |= UART_MSR_RI
        if mcr & UART_MCR_OUT2:
            lines |= UART_MSR_DCD
        return lines

    def _interrupt_id(self) -> int:
        """IIR bits 3:0 by the 16550's fixed priority (16550D table 4)."""
        ier = self._ier
        if ier & UART_IER_RLSI and self._lsr_errors:
            return UART_IIR_RLSI
        if ier & UART_IER_RDI and self._rx:
            return UART_IIR_RDI
        if ier & UART_IER_THRI and self._thr_pending:
            return UART_IIR_THRI
        if ier & UART_IER_MSI and self._msr_deltas:
            return UART_IIR_MSI
        return UART_IIR_NO_INT

    def _update_irq(self) -> None:
        mcr = self._mcr
        level = (
            self._interrupt_id() != UART_IIR_NO_INT
            and bool(mcr & UART_MCR_OUT2)
            and not mcr & UART_MCR_LOOP
        )
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)
