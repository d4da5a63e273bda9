"""The e820 map xvm reports, for small and large guests."""

from __future__ import annotations

import struct

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.e820 import (
    E820_RAM,
    E820_RESERVED,
    E820Entry,
    build_e820_map,
    low_ram_end,
    pack_e820_entries,
    require_low_ram,
)
from xvm.errors import ConfigError, LoaderError
from xvm.memory.guest_memory import GuestMemory, MemoryRegion, ram_layout

MiB = 1 << 20
GiB = 1 << 30


def _layout_only(ram_size: int) -> GuestMemory:
    """A GuestMemory with the real region layout but no mappings: the map needs only bases and sizes."""
    return GuestMemory([MemoryRegion(base, size, mapping=None) for base, size in ram_layout(ram_size)])


def test_small_guest():
    entries = build_e820_map(_layout_only(256 * MiB))
    assert entries == [
        E820Entry(0, layout.EBDA_START, E820_RAM),
        E820Entry(layout.EBDA_START, 0x100000 - layout.EBDA_START, E820_RESERVED),
        E820Entry(0x100000, 255 * MiB, E820_RAM),
    ]


def test_large_guest_continues_above_4g():
    entries = build_e820_map(_layout_only(4 * GiB))
    assert entries[2] == E820Entry(0x100000, layout.MMIO_HOLE_START - 0x100000, E820_RAM)
    assert entries[3] == E820Entry(4 * GiB, 4 * GiB - layout.MMIO_HOLE_START, E820_RAM)
    assert len(entries) == 4
    # Usable RAM plus the reserved low range account for every byte.
    assert sum(e.size for e in entries) == 4 * GiB


def test_reserved_range_covers_mp_and_acpi_tables():
    reserved = [e for e in build_e820_map(_layout_only(64 * MiB)) if e.type == E820_RESERVED]
    (r,) = reserved
    for addr in (layout.MPTABLE_START, layout.ACPI_RSDP_START, layout.ACPI_TABLES_START, layout.BIOS_ROM_START):
        assert r.addr <= addr < r.end


def test_boot_structures_sit_in_usable_ram_below_the_ebda():
    first = build_e820_map(_layout_only(64 * MiB))[0]
    for addr in (layout.ZERO_PAGE_START, layout.PML4_START, layout.CMDLINE_START, layout.MULTIBOOT_INFO_START):
        assert first.addr <= addr < first.end


def test_pack_is_struct_boot_e820_entry():
    blob = pack_e820_entries([E820Entry(0x100000, 0x2000, E820_RAM), E820Entry(1 << 32, 5, E820_RESERVED)])
    assert len(blob) == 40
    assert struct.unpack("<QQIQQI", blob) == (0x100000, 0x2000, 1, 1 << 32, 5, 2)


def test_pack_refuses_more_than_the_zero_page_holds():
    with pytest.raises(ConfigError):
        pack_e820_entries([E820Entry(i * 0x1000, 0x1000, E820_RAM) for i in range(129)])


def test_ram_of_1mib_or_less_is_refused():
    with pytest.raises(ConfigError, match="raise --mem"):
        build_e820_map(GuestMemory([MemoryRegion(0, MiB, mapping=None)]))


def test_require_low_ram():
    memory = _layout_only(32 * MiB)
    assert low_ram_end(memory) == 32 * MiB
    require_low_ram(memory, 32 * MiB, "kernel")
    message = r"^kernel k needs 33 MiB of guest RAM but --mem is 32M: use --mem 33M or more$"
    with pytest.raises(LoaderError, match=message):
        require_low_ram(memory, 32 * MiB + 1, "kernel k")
    with pytest.raises(LoaderError, match="above the 3072 MiB of RAM below the MMIO hole"):
        require_low_ram(memory, layout.MMIO_HOLE_START + 1, "kernel k")
