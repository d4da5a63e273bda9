"""GuestMemory: layout around the MMIO hole, cross-region access, bounds checks."""

import pytest

from xvm.arch.x86 import layout
from xvm.errors import ConfigError, GuestMemoryError
from xvm.memory import GuestMemory, ram_layout


def test_small_guest_is_one_region():
    assert ram_layout(256 * layout.MiB) == [(0, 256 * layout.MiB)]


def test_large_guest_skips_the_mmio_hole():
    regions = ram_layout(4 * layout.GiB)
    assert regions == [(0, layout.MMIO_HOLE_START), (layout.HIGH_RAM_START, 4 * layout.GiB - layout.MMIO_HOLE_START)]


def test_read_write_integers_and_bytes():
    mem = GuestMemory.allocate(16 * layout.MiB)
    try:
        mem.write_u64(0x1000, 0x1122334455667788)
        assert mem.read_u32(0x1000) == 0x55667788
        assert mem.read_u16(0x1006) == 0x1122
        assert mem.read(0x1000, 2) == b"\x88\x77"
        mem.fill(0x2000, 16, 0xAB)
        assert mem.read(0x2000, 16) == b"\xab" * 16
        assert mem.view(0x2000, 4).tobytes() == b"\xab" * 4
    finally:
        mem.close()


@pytest.mark.parametrize("gpa,length", [(16 * layout.MiB - 1, 2), (16 * layout.MiB, 1), (-1, 1),
                                        (layout.MMIO_HOLE_START, 4), (1 << 63, 8)])
def test_accesses_outside_ram_raise_without_partial_writes(gpa, length):
    mem = GuestMemory.allocate(16 * layout.MiB)
    try:
        assert not mem.contains(gpa, length)
        with pytest.raises(GuestMemoryError):
            mem.write(gpa, b"\x01" * length)
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, length)
        assert mem.read(16 * layout.MiB - 1, 1) == b"\x00"  # the in-range byte was not written
    finally:
        mem.close()


def test_negative_length_is_rejected():
    mem = GuestMemory.allocate(16 * layout.MiB)
    try:
        with pytest.raises(GuestMemoryError):
            mem.read(0, -1)
    finally:
        mem.close()


def test_access_spanning_two_regions():
    first = GuestMemory.allocate(16 * layout.MiB)
    second = GuestMemory.allocate(16 * layout.MiB)
    try:
        # Stitch two regions back to back to check that one access can span both.
        first.regions[0].guest_base = 0
        second.regions[0].guest_base = 16 * layout.MiB
        both = GuestMemory(first.regions + second.regions)
        both.write(16 * layout.MiB - 2, b"ABCD")
        assert both.read(16 * layout.MiB - 2, 4) == b"ABCD"
        assert first.regions[0].mapping[-2:] == b"AB"
        assert second.regions[0].mapping[:2] == b"CD"
        with pytest.raises(GuestMemoryError):
            both.view(16 * layout.MiB - 2, 4)
    finally:
        first.close()
        second.close()


def test_size_must_be_page_multiple():
    with pytest.raises(ConfigError):
        GuestMemory.allocate(4097)
