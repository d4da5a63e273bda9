"""The 16550A against what Linux's 8250 driver does (drivers/tty/serial/8250/8250_port.c)."""

from __future__ import annotations

import threading

from xvm.devices.legacy.uart8250 import (
    RX_FIFO_SIZE,
    UART_DLL,
    UART_DLM,
    UART_FCR,
    UART_IER,
    UART_IIR,
    UART_LCR,
    UART_LSR,
    UART_MCR,
    UART_MSR,
    UART_RX,
    UART_SCR,
    UART_TX,
    Uart8250,
)


def make(irq):
    out = []
    return Uart8250(irq, out.append), out


def test_autoconfig_sequence(irq):
    uart, _ = make(irq)
    # IER read-back (autoconfig: scratch2 == 0, scratch3 == 0x0F)
    uart.write(UART_IER, 1, 0)
    assert uart.read(UART_IER, 1) & 0x0F == 0
    uart.write(UART_IER, 1, 0x0F)
    assert uart.read(UART_IER, 1) & 0x0F == 0x0F
    uart.write(UART_IER, 1, 0xFF)
    assert uart.read(UART_IER, 1) == 0x0F  # IER_UUE (bit 6) must not stick: not an XScale
    uart.write(UART_IER, 1, 0)
    # scratch register
    for value in (0x55, 0xAA, 0x00):
        uart.write(UART_SCR, 1, value)
        assert uart.read(UART_SCR, 1) == value
    # loopback: MCR = LOOP | OUT2 | RTS -> MSR high nibble 0x90
    uart.write(UART_MCR, 1, 0x10 | 0x0A)
    assert uart.read(UART_MSR, 1) & 0xF0 == 0x90
    uart.write(UART_MCR, 1, 0)
    # FIFO detection: FCR = 1 then IIR >> 6 == 3 (16550A)
    uart.write(UART_LCR, 1, 0)
    uart.write(UART_FCR, 1, 0x01)
    assert uart.read(UART_IIR, 1) >> 6 == 3
    # With DLAB set, offset 2 still reads IIR (nonzero): no EFR, not a 16650.
    uart.write(UART_LCR, 1, 0xBF)
    assert uart.read(UART_IIR, 1) != 0
    # TI16750 probe: bit 5 never sets
    uart.write(UART_LCR, 1, 0)
    uart.write(UART_FCR, 1, 0x21)
    assert uart.read(UART_IIR, 1) >> 5 == 6
    uart.write(UART_FCR, 1, 0)
    assert uart.read(UART_IIR, 1) >> 6 == 0
    assert uart.read(UART_LSR, 1) != 0xFF


def test_loopback_msr_mirrors_every_line(irq):
    uart, out = make(irq)
    uart.write(UART_MCR, 1, 0x1F)
    assert uart.read(UART_MSR, 1) & 0xF0 == 0xF0
    uart.write(UART_MCR, 1, 0x10)
    # TERI on RI's falling edge, deltas for the others; cleared by reading
    assert uart.read(UART_MSR, 1) == 0x0F
    assert uart.read(UART_MSR, 1) == 0x00
    uart.write(UART_TX, 1, 0x41)
    assert out == []
    assert uart.read(UART_LSR, 1) & 0x01
    assert uart.read(UART_RX, 1) == 0x41
    assert uart.receive(b"x") == 0  # input disconnected in loopback


def test_msr_reports_host_lines_outside_loopback(irq):
    uart, _ = make(irq)
    assert uart.read(UART_MSR, 1) == 0xB0


def test_divisor_latch(irq):
    uart, _ = make(irq)
    uart.write(UART_IER, 1, 0x05)
    uart.write(UART_LCR, 1, 0x83)
    uart.write(UART_DLL, 1, 0x01)
    uart.write(UART_DLM, 1, 0x02)
    assert uart.read(UART_DLL, 1) == 0x01
    assert uart.read(UART_DLM, 1) == 0x02
    uart.write(UART_LCR, 1, 0x03)
    assert uart.divisor == 0x0201
    assert uart.read(UART_IER, 1) == 0x05
    assert uart.read(UART_LCR, 1) == 0x03


def test_tx_goes_out_and_lsr_stays_empty(irq):
    uart, out = make(irq)
    for ch in b"hi\n":
        assert uart.read(UART_LSR, 1) & 0x60 == 0x60
        uart.write(UART_TX, 1, ch)
    assert b"".join(out) == b"hi\n"
    assert uart.bytes_out == 3


def test_tx_interrupt_gated_by_out2(irq):
    uart, _ = make(irq)
    uart.write(UART_IER, 1, 0x02)
    assert not irq.level  # OUT2 clear: the PC's IRQ buffer is off
    assert uart.read(UART_IIR, 1) & 0x0F == 0x02  # pending inside the chip
    uart.write(UART_IER, 1, 0)
    uart.write(UART_MCR, 1, 0x0B)  # DTR | RTS | OUT2, as Linux sets
    uart.write(UART_IER, 1, 0x02)
    assert irq.level
    assert uart.read(UART_IIR, 1) & 0x0F == 0x02
    assert not irq.level  # IIR read cleared THRE
    assert uart.read(UART_IIR, 1) & 0x0F == 0x01
    uart.write(UART_TX, 1, 0x41)  # byte leaves at once: THRE again
    assert irq.level
    uart.write(UART_IER, 1, 0)
    assert not irq.level


def test_thre_reraised_when_etbei_goes_0_to_1(irq):
    """serial8250_do_startup's UART_BUG_THRE probe."""
    uart, _ = make(irq)
    uart.write(UART_MCR, 1, 0x0B)
    uart.write(UART_IER, 1, 0x02)
    iir1 = uart.read(UART_IIR, 1)
    uart.write(UART_IER, 1, 0)
    uart.write(UART_IER, 1, 0x02)
    iir = uart.read(UART_IIR, 1)
    uart.write(UART_IER, 1, 0)
    assert not iir1 & 0x01
    assert not iir & 0x01  # reasserted: the port is not buggy
    # the UART_BUG_TXEN probe: LSR.TEMT with an interrupt pending
    uart.write(UART_IER, 1, 0x02)
    lsr = uart.read(UART_LSR, 1)
    iir = uart.read(UART_IIR, 1)
    assert lsr & 0x40 and not iir & 0x01


def test_rx_interrupt_and_data_ready(irq):
    uart, _ = make(irq)
    uart.write(UART_MCR, 1, 0x0B)
    uart.write(UART_IER, 1, 0x01)
    assert not irq.level
    assert uart.receive(b"ab") == 2
    assert irq.level
    assert uart.read(UART_IIR, 1) & 0x0F == 0x04
    assert uart.read(UART_LSR, 1) & 0x01
    assert uart.read(UART_RX, 1) == ord("a")
    assert irq.level
    assert uart.read(UART_RX, 1) == ord("b")
    assert not irq.level
    assert not uart.read(UART_LSR, 1) & 0x01
    assert uart.read(UART_RX, 1) == ord("b")  # holding register keeps the last byte


def test_iir_priority_rx_over_thre(irq):
    uart, _ = make(irq)
    uart.write(UART_MCR, 1, 0x08)
    uart.write(UART_IER, 1, 0x03)
    uart.receive(b"z")
    assert uart.read(UART_IIR, 1) & 0x0F == 0x04
    assert uart.read(UART_IIR, 1) & 0x0F == 0x04  # reading IIR does not clear RDI
    uart.read(UART_RX, 1)
    assert uart.read(UART_IIR, 1) & 0x0F == 0x02
    assert uart.read(UART_IIR, 1) & 0x0F == 0x01


def test_overrun_in_loopback_raises_line_status(irq):
    uart, _ = make(irq)
    uart.write(UART_MCR, 1, 0x10)
    uart.write(UART_IER, 1, 0x05)
    for _ in range(RX_FIFO_SIZE + 1):
        uart.write(UART_TX, 1, 0x55)
    assert uart.read(UART_IIR, 1) & 0x0F == 0x06
    assert uart.read(UART_LSR, 1) & 0x02
    assert not uart.read(UART_LSR, 1) & 0x02
    assert not irq.level  # loopback forces OUT2 inactive


def test_receive_is_bounded_and_loses_nothing(irq):
    uart, _ = make(irq)
    data = bytes(range(200))
    taken = uart.receive(data)
    assert taken == RX_FIFO_SIZE
    assert uart.rx_space() == 0
    assert uart.receive(data[taken:]) == 0
    got = bytearray()
    while uart.read(UART_LSR, 1) & 0x01:
        got.append(uart.read(UART_RX, 1))
    taken += uart.receive(data[taken:])
    while uart.read(UART_LSR, 1) & 0x01:
        got.append(uart.read(UART_RX, 1))
    assert bytes(got) == data[:taken]


def test_fcr_clears_receive_fifo(irq):
    uart, _ = make(irq)
    uart.write(UART_FCR, 1, 0x01)
    uart.receive(b"abc")
    uart.write(UART_FCR, 1, 0x03)
    assert not uart.read(UART_LSR, 1) & 0x01


def test_receive_from_another_thread(irq):
    uart, _ = make(irq)
    payload = bytes(i & 0xFF for i in range(2000))
    got = bytearray()

    def feed():
        pos = 0
        while pos < len(payload):
            pos += uart.receive(payload[pos:])

    t = threading.Thread(target=feed)
    t.start()
    while len(got) < len(payload):
        if uart.read(UART_LSR, 1) & 0x01:
            got.append(uart.read(UART_RX, 1))
    t.join()
    assert bytes(got) == payload


def test_out_of_range_offset_reads_all_ones(irq):
    uart, out = make(irq)
    assert uart.read(8, 1) == 0xFF
    uart.write(8, 1, 0x41)
    assert out == []
