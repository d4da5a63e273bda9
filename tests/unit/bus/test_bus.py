"""Bus: overlap rejection, offset dispatch, unmapped accesses handled in one place."""

import pytest

from xvm.bus import Bus, BusError


class Recorder:
    def __init__(self, value=0x5A):
        self.value = value
        self.writes = []
        self.reads = []

    def read(self, offset, size):
        self.reads.append((offset, size))
        return self.value

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def test_device_sees_offsets_from_its_base():
    bus = Bus("pio")
    dev = Recorder()
    bus.insert(dev, 0x3F8, 8)
    bus.write(0x3FB, 1, 0x83)
    assert bus.read(0x3FD, 1) == 0x5A
    assert dev.writes == [(3, 1, 0x83)]
    assert dev.reads == [(5, 1)]


@pytest.mark.parametrize("base,length", [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3FA, 2), (0x3F0, 0x20)])
def test_overlapping_insert_is_rejected(base, length):
    bus = Bus("pio")
    bus.insert(Recorder(), 0x3F8, 8)
    with pytest.raises(BusError, match="overlaps"):
        bus.insert(Recorder(), base, length)


def test_adjacent_ranges_are_fine():
    bus = Bus("pio")
    low, high = Recorder(1), Recorder(2)
    bus.insert(high, 0x400, 0x10)
    bus.insert(low, 0x3F0, 0x10)
    assert bus.read(0x3FF, 1) == 1
    assert bus.read(0x400, 1) == 2


def test_unmapped_reads_float_high_and_writes_are_dropped_and_counted():
    bus = Bus("mmio")
    bus.insert(Recorder(), 0x1000, 0x10)
    assert bus.read(0x2000, 1) == 0xFF
    assert bus.read(0x2000, 4) == 0xFFFFFFFF
    assert bus.read(0x0FFF, 2) == 0xFFFF
    bus.write(0x1010, 4, 7)
    assert (bus.unmapped_reads, bus.unmapped_writes) == (3, 1)


def test_values_are_truncated_to_access_size():
    bus = Bus("pio")
    dev = Recorder(value=0x1234_5678)
    bus.insert(dev, 0x10, 4)
    assert bus.read(0x10, 1) == 0x78
    bus.write(0x10, 2, 0xABCDEF)
    assert dev.writes[-1] == (0, 2, 0xCDEF)


def test_remove_frees_the_range():
    bus = Bus("mmio")
    bus.insert(Recorder(), 0x1000, 0x100)
    bus.remove(0x1000)
    bus.insert(Recorder(), 0x1080, 0x100)
    with pytest.raises(BusError):
        bus.remove(0x5000)
