"""PVH direct boot of an uncompressed Linux vmlinux (x86/HVM direct boot ABI, Xen docs/misc/pvh.pandoc).

A kernel built with CONFIG_PVH carries an ELF note XEN_ELFNOTE_PHYS32_ENTRY
(owner "Xen", type 18) with the physical address of a 32-bit entry point
(Linux arch/x86/platform/pvh/head.S, pvh_start_xen). Booting there skips the
bzImage decompressor, which is tens of millions of guest instructions.

The kernel is entered in 32-bit protected mode with paging off and flat
__BOOT_CS/__BOOT_DS-style segments, EBX = struct hvm_start_info (Xen's
public/arch-x86/hvm/start_info.h), which gives the command line, the initrd as
module 0, the RSDP and the memory map. Linux requires version >= 1 with a
memory map when it is not running on Xen (arch/x86/platform/pvh/enlighten.c).
The MP and ACPI tables are the same as for any Linux boot.

    entry = pvh_entry(elf, data, name)      # None: not a PVH kernel
    kernel = load_pvh_kernel(memory, elf, data, entry, name)
    memory.write(layout.PVH_INFO_START, build_start_info(layout.PVH_INFO_START, ...))
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from xvm.arch.x86 import layout
from xvm.arch.x86.e820 import E820Entry, require_low_ram
from xvm.errors import LoaderError
from xvm.loaders.elf import ElfImage
from xvm.memory.guest_memory import GuestMemory

XEN_ELFNOTE_PHYS32_ENTRY = 18
XEN_NOTE_OWNER = b"Xen"
XEN_HVM_START_MAGIC_VALUE = 0x336EC578
HVM_START_INFO_VERSION = 1
#: struct hvm_start_info: magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr,
#: rsdp_paddr, memmap_paddr, memmap_entries, reserved (56 bytes).
_START_INFO = struct.Struct("<IIIIQQQQII")
#: struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved.
_MODLIST_ENTRY = struct.Struct("<QQQQ")
#: struct hvm_memmap_table_entry: addr, size, type (e820 numbering), reserved.
_MEMMAP_ENTRY = struct.Struct("<QQII")
#: x86 Linux COMMAND_LINE_SIZE: the PVH path has no setup header to ask for cmdline_size.
LINUX_COMMAND_LINE_SIZE = 2048
#: Highest initrd address for a kernel without a setup header: the initrd_addr_max x86-64 bzImages carry.
LINUX_INITRD_ADDR_MAX = 0x7FFFFFFF


def pvh_entry(elf: ElfImage, data: bytes, name: str) -> Optional[int]:
    """The XEN_ELFNOTE_PHYS32_ENTRY address, or None when the kernel has no PVH entry."""
    for note in elf.notes(data, name):
        if note.name == XEN_NOTE_OWNER and note.type == XEN_ELFNOTE_PHYS32_ENTRY:
            # Linux emits the note with _ASM_PTR: 8 bytes on x86-64, 4 on i386.
            if len(note.desc) not in (4, 8):
                raise LoaderError(f"{name}: the PVH entry note has {len(note.desc)} bytes; the file is damaged")
            return int.from_bytes(note.desc, "little")
    return None


@dataclass(frozen=True)
class PvhKernel:
    """A vmlinux placed at its physical addresses: [start, end) including bss."""

    entry: int
    start: int
    end: int


def load_pvh_kernel(memory: GuestMemory, elf: ElfImage, data: bytes, entry: int, name: str) -> PvhKernel:
    """Copy the PT_LOAD segments to p_paddr (bss zeroed); they must lie in RAM above 1 MiB."""
    segments = elf.load_segments()
    if not segments:
        raise LoaderError(f"{name}: the ELF file has no loadable segment; the file is damaged")
    start = min(seg.paddr for seg in segments)
    end = max(seg.paddr + seg.memsz for seg in segments)
    if start < layout.HIGH_MEMORY_START:
        raise LoaderError(f"{name} loads at {start:#x}, below 1 MiB where xvm keeps the boot tables: relink it")
    require_low_ram(memory, end, f"kernel {name}")
    for seg in segments:
        blob = seg.data(data)
        memory.write(seg.paddr, blob)
        memory.fill(seg.paddr + len(blob), seg.memsz - len(blob))
    return PvhKernel(entry=entry, start=start, end=end)


def build_start_info(
    base: int,
    cmdline_addr: int,
    initrd: Optional[tuple[int, int]],
    rsdp_addr: int,
    e820: list[E820Entry],
) -> bytes:
    """hvm_start_info at `base`, followed by the module list (the initrd) and the memory map."""
    modlist_addr = base + _START_INFO.size
    modules = b"" if initrd is None else _MODLIST_ENTRY.pack(initrd[0], initrd[1], 0, 0)
    memmap_addr = modlist_addr + len(modules)
    memmap = b"".join(_MEMMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in e820)
    info = _START_INFO.pack(
        XEN_HVM_START_MAGIC_VALUE,
        HVM_START_INFO_VERSION,
        0,
        0 if initrd is None else 1,
        modlist_addr if modules else 0,
        cmdline_addr,
        rsdp_addr,
        memmap_addr,
        len(e820),
        0,
    )
    blob = info + modules + memmap
    if len(blob) > layout.PAGE_SIZE:
        raise LoaderError(f"the PVH start info takes {len(blob)} bytes, more than the page xvm reserves for it")
    return blob
