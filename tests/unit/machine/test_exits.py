"""The exit dispatcher serves both engines' device exits from the buses."""

from xvm.bus import Bus
from xvm.engines.base import Hlt, IoIn, IoOut, MmioRead, MmioWrite
from xvm.machine.exits import ExitDispatcher


class Register:
    def __init__(self):
        self.value = 0
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return self.value

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))
        self.value = value


def make():
    pio, mmio = Bus("pio"), Bus("mmio")
    port, reg = Register(), Register()
    pio.insert(port, 0x3F8, 8)
    mmio.insert(reg, 0xD000_0000, 0x1000)
    return ExitDispatcher(pio, mmio), port, reg


def test_string_out_writes_each_item():
    dispatcher, port, _ = make()
    assert dispatcher.serve_io(IoOut(0x3F8, 1, 3, b"abc"))
    assert [entry[3] for entry in port.log] == [ord("a"), ord("b"), ord("c")]


def test_in_fills_the_engine_buffer():
    dispatcher, port, _ = make()
    port.value = 0x1234
    buffer = bytearray(4)
    assert dispatcher.serve_io(IoIn(0x3F9, 2, 2, memoryview(buffer)))
    assert buffer == b"\x34\x12\x34\x12"
    unmapped = bytearray(1)
    dispatcher.serve_io(IoIn(0x100, 1, 1, memoryview(unmapped)))
    assert unmapped == b"\xff"


def test_mmio_read_write_and_wide_accesses_split():
    dispatcher, _, reg = make()
    dispatcher.serve_io(MmioWrite(0xD000_0010, b"\x01\x02\x03\x04"))
    assert reg.log[-1] == ("w", 0x10, 4, 0x04030201)
    out = bytearray(16)
    dispatcher.serve_io(MmioRead(0xD000_0020, memoryview(out)))
    assert [e[:3] for e in reg.log[-2:]] == [("r", 0x20, 8), ("r", 0x28, 8)]


def test_other_exits_are_left_to_the_caller():
    dispatcher, _, _ = make()
    assert not dispatcher.serve_io(Hlt())
    assert dispatcher.counts["Hlt"] == 1
