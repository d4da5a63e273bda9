"""The BIOS e820 memory map xvm hands to a directly booted kernel.

A PC firmware answers INT 15h/E820h with the ranges of usable RAM; a kernel
booted directly gets the same list in struct boot_params (Linux) or in the
multiboot mmap. xvm's map follows the PC convention Linux expects
(arch/x86/kernel/e820.c, Firecracker arch/x86_64/mod.rs):

    0 .. EBDA_START             usable  (IVT, BDA, boot structures, stack)
    EBDA_START .. 1 MiB         reserved (EBDA with the MP table, VGA hole, ACPI tables, BIOS area)
    1 MiB .. end of low RAM     usable  (kernel, initrd)
    4 GiB .. end of high RAM    usable  (only when RAM does not fit below the MMIO hole)

The 32-bit MMIO hole is left out of the map: Linux treats gaps as address
space for PCI BARs, so marking it reserved would only hide it.

    entries = build_e820_map(memory)
    blob = pack_e820_entries(entries)      # struct boot_e820_entry[], 20 bytes each
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xvm.arch.x86 import layout
from xvm.errors import ConfigError, LoaderError
from xvm.memory.guest_memory import GuestMemory

#: Range types (ACPI 6.5 table 15.1; Linux arch/x86/include/asm/e820/types.h).
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_UNUSABLE = 5

#: struct boot_e820_entry { u64 addr; u64 size; u32 type; } __packed
_BOOT_E820_ENTRY = struct.Struct("<QQI")
#: Entries that fit in boot_params.e820_table (E820_MAX_ENTRIES_ZEROPAGE).
E820_MAX_ENTRIES_ZEROPAGE = 128


@dataclass(frozen=True)
class E820Entry:
    """One range of the map: [addr, addr + size) of kind `type` (E820_RAM, ...)."""

    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def low_ram_end(memory: GuestMemory) -> int:
    """End of the RAM region that starts at guest-physical 0 (RAM below the MMIO hole)."""
    region = memory.find_region(0)
    return region.guest_end


def require_low_ram(memory: GuestMemory, end: int, what: str) -> None:
    """Raise LoaderError naming the --mem needed unless RAM below the MMIO hole reaches `end`."""
    have = low_ram_end(memory)
    if end <= have:
        return
    if end > layout.MMIO_HOLE_START:
        raise LoaderError(
            f"{what} would end at {end:#x}, above the {layout.MMIO_HOLE_START >> 20} MiB of RAM below the "
            "MMIO hole: use a smaller kernel or initrd"
        )
    need = -(-end // layout.MiB)
    raise LoaderError(f"{what} needs {need} MiB of guest RAM but --mem is {have >> 20}M: use --mem {need}M or more")


def build_e820_map(memory: GuestMemory) -> list[E820Entry]:
    """The e820 map for `memory`, sorted by address."""
    entries = []
    for region in memory.regions:
        if region.guest_base == 0:
            if region.size <= layout.HIGH_MEMORY_START:
                raise ConfigError(
                    f"guest RAM below 4 GiB is {region.size >> 10} KiB; a PC needs more than 1 MiB: raise --mem"
                )
            entries.append(E820Entry(0, layout.EBDA_START, E820_RAM))
            entries.append(
                E820Entry(layout.EBDA_START, layout.HIGH_MEMORY_START - layout.EBDA_START, E820_RESERVED)
            )
            entries.append(
                E820Entry(layout.HIGH_MEMORY_START, region.guest_end - layout.HIGH_MEMORY_START, E820_RAM)
            )
        else:
            entries.append(E820Entry(region.guest_base, region.size, E820_RAM))
    return entries


def pack_e820_entries(entries: list[E820Entry]) -> bytes:
    """Encode `entries` as boot_params.e820_table (struct boot_e820_entry[])."""
    if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
        raise ConfigError(f"{len(entries)} e820 entries do not fit in the zero page ({E820_MAX_ENTRIES_ZEROPAGE})")
    return b"".join(_BOOT_E820_ENTRY.pack(e.addr, e.size, e.type) for e in entries)
