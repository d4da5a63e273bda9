"""isa-debug-exit, the POST-code port and the 8042 keyboard controller."""

from __future__ import annotations

from xvm.bus.bus import Bus
from xvm.devices.legacy.debug_exit import DebugExit
from xvm.devices.legacy.i8042 import I8042
from xvm.devices.legacy.post_code import PostCode


def test_debug_exit_reports_raw_value():
    seen = []
    dev = DebugExit(seen.append)
    dev.write(0, 1, 3)
    dev.write(0, 4, 0x12345678)
    assert seen == [3, 0x12345678]
    assert dev.read(0, 1) == 0xFF
    assert dev.read(0, 4) == 0xFFFFFFFF
    dev.write(1, 1, 5)  # outside the port
    assert seen == [3, 0x12345678]


def test_post_code_latches_last_byte():
    dev = PostCode()
    assert dev.read(0, 1) == 0
    dev.write(0, 1, 0x42)
    dev.write(0, 1, 0x1FF)
    assert dev.read(0, 1) == 0xFF
    assert dev.writes == 2


def kbc_on_bus(irq):
    resets = []
    kbc = I8042(lambda: resets.append(True), kbd_irq=irq)
    bus = Bus("pio")
    bus.insert(kbc.data_port, 0x60, 1)
    bus.insert(kbc.command_port, 0x64, 1)
    return kbc, bus, resets


def command(bus, cmd):
    bus.write(0x64, 1, cmd)
    assert bus.read(0x64, 1) & 0x01
    return bus.read(0x60, 1)


def test_i8042_probe_sequence(irq):
    _, bus, _ = kbc_on_bus(irq)
    assert bus.read(0x64, 1) & 0x02 == 0  # never busy: kb_wait() returns at once
    assert command(bus, 0xAA) == 0x55
    assert bus.read(0x64, 1) & 0x04  # system flag
    assert command(bus, 0xAB) == 0x00
    assert command(bus, 0xA9) == 0x00
    ctr = command(bus, 0x20)
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, ctr & ~0x03)
    assert command(bus, 0x20) == ctr & ~0x03
    bus.write(0x64, 1, 0xAD)
    assert command(bus, 0x20) & 0x10
    bus.write(0x64, 1, 0xAE)
    assert not command(bus, 0x20) & 0x10
    assert not bus.read(0x64, 1) & 0x01  # output buffer drained


def test_i8042_keyboard_answers_atkbd(irq):
    _, bus, _ = kbc_on_bus(irq)
    bus.write(0x60, 1, 0xFF)
    assert irq.level  # IRQ1 with KBDINT set
    assert [bus.read(0x60, 1), bus.read(0x60, 1)] == [0xFA, 0xAA]
    assert not irq.level
    bus.write(0x60, 1, 0xF2)
    assert [bus.read(0x60, 1) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    bus.write(0x60, 1, 0xED)
    bus.write(0x60, 1, 0x07)
    assert [bus.read(0x60, 1) for _ in range(2)] == [0xFA, 0xFA]


def test_i8042_aux_loop_flags_aux_data():
    kbc = I8042(lambda: None)
    kbc.write(4, 1, 0xD3)
    kbc.write(0, 1, 0x5A)
    assert kbc.read(4, 1) & 0x21 == 0x21
    assert kbc.read(0, 1) == 0x5A


def test_i8042_pulse_reset(irq):
    _, bus, resets = kbc_on_bus(irq)
    bus.write(0x64, 1, 0xFF)  # pulses nothing
    assert resets == []
    bus.write(0x64, 1, 0xFE)
    assert resets == [True]


def test_i8042_output_port_reset_and_a20(irq):
    a20 = []
    resets = []
    kbc = I8042(lambda: resets.append(True), on_a20=a20.append)
    kbc.write(4, 1, 0xD0)
    assert kbc.read(0, 1) & 0x03 == 0x03
    kbc.write(4, 1, 0xD1)
    kbc.write(0, 1, 0x01)  # A20 off, reset line still high
    assert a20 == [False] and not kbc.a20_enabled and resets == []
    kbc.write(4, 1, 0xD1)
    kbc.write(0, 1, 0x02)  # bit 0 clear: reset
    assert resets == [True] and a20 == [False, True]


def test_i8042_one_edge_per_byte(irq):
    _, bus, _ = kbc_on_bus(irq)
    bus.write(0x60, 1, 0xF2)  # three bytes queued: FA AB 83
    assert irq.raised == 1
    bus.read(0x60, 1)
    bus.read(0x60, 1)
    assert irq.raised == 3
    bus.read(0x60, 1)
    assert not irq.level
