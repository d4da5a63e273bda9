"""Resource control: no sequence of guest register accesses makes a device raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xvm.bus.irq import MsiMessage, NullIrqLine
from xvm.devices.clock import VirtualClock
from xvm.devices.legacy.debug_exit import DebugExit
from xvm.devices.legacy.i8042 import I8042
from xvm.devices.legacy.i8254_pit import I8254Pit, SystemControlPortB
from xvm.devices.legacy.interrupts import InterruptRouter
from xvm.devices.legacy.mc146818_rtc import Mc146818Rtc
from xvm.devices.legacy.post_code import PostCode
from xvm.devices.legacy.uart8250 import Uart8250

SIZES = st.sampled_from([1, 2, 4])


def ops(max_offset: int):
    """(kind, offset, size, value, time step) tuples; kind 0 = read, 1 = write, 2 = time passes."""
    return st.lists(
        st.tuples(
            st.integers(0, 2),
            st.integers(0, max_offset),
            SIZES,
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 5_000_000),
        ),
        max_size=80,
    )


def run(device, sequence, clock, tick=None, extra=None):
    for kind, offset, size, value, step in sequence:
        if kind == 0:
            result = device.read(offset, size)
            assert isinstance(result, int) and result >= 0
        elif kind == 1:
            device.write(offset, size, value & ((1 << (8 * size)) - 1))
        else:
            clock.advance(step)
            if tick is not None:
                tick(clock.now_ns())
            if extra is not None:
                extra(value)


FUZZ = settings(max_examples=60, deadline=None)


@FUZZ
@given(ops(9))
def test_uart(sequence):
    clock = VirtualClock()
    uart = Uart8250(NullIrqLine(), lambda data: None)
    run(uart, sequence, clock, extra=lambda v: uart.receive(v.to_bytes(4, "little")))


@FUZZ
@given(ops(5))
def test_i8042(sequence):
    kbc = I8042(lambda: None, on_a20=lambda on: None)
    run(kbc, sequence, VirtualClock())
    run(kbc.command_port, sequence, VirtualClock())


@FUZZ
@given(ops(2))
def test_rtc(sequence):
    clock = VirtualClock(123)
    rtc = Mc146818Rtc(NullIrqLine(), clock, wall_time=lambda: 1.8e9, mem_below_4g=1 << 30)
    run(rtc, sequence, clock, tick=rtc.tick)
    rtc.next_deadline()


@FUZZ
@given(ops(2))
def test_small_ports(sequence):
    run(DebugExit(lambda v: None), sequence, VirtualClock())
    run(PostCode(), sequence, VirtualClock())


@FUZZ
@given(ops(4))
def test_pit(sequence):
    clock = VirtualClock()
    pit = I8254Pit(NullIrqLine(), clock)
    port_b = SystemControlPortB(pit)

    def extra(value):
        port_b.write(0, 1, value & 0xFF)
        deadline = pit.next_deadline()
        assert deadline is None or deadline > 0

    run(pit, sequence, clock, tick=pit.tick, extra=extra)


@FUZZ
@given(ops(3), st.lists(st.tuples(st.integers(-2, 17), st.booleans()), max_size=30))
def test_pic(sequence, irqs):
    router = InterruptRouter(1, VirtualClock())
    master, slave, elcr = (dev for _, _, dev in router.pio_devices())
    for irq, level in irqs:
        router.set_irq(irq, level)
        if router.pending(0):
            assert 0 <= router.acknowledge(0) <= 0xFF
    for device in (master, slave, elcr):
        run(device, sequence, VirtualClock(), extra=lambda v: router.acknowledge(0))


@FUZZ
@given(ops(0xFFF))
def test_lapic_and_ioapic(sequence):
    clock = VirtualClock()
    router = InterruptRouter(2, clock)
    ioapic, lapic = (dev for _, _, dev in router.mmio_devices())

    def extra(value):
        router.set_irq(value % 30, bool(value & 0x100))
        router.signal_msi(MsiMessage(address=0xFEE00000 | (value & 0xFF00C), data=value >> 8))
        for cpu in (0, 1):
            if router.pending(cpu):
                assert 0 <= router.acknowledge(cpu) <= 0xFF
        router.next_deadline()

    run(lapic, sequence, clock, tick=router.tick, extra=extra)
    run(ioapic, [(k, o & 0x1F, s, v, t) for k, o, s, v, t in sequence], clock, tick=router.tick, extra=extra)
