"""Multiboot v1 kernels (Multiboot Specification 0.6.96), as QEMU's `-kernel` loads them.

A multiboot kernel carries a 12+ byte header, 4-byte aligned within its first
8192 bytes: magic 0x1BADB002, flags, checksum (the three sum to 0 mod 2^32).
Flags bits 0-15 are requirements a loader must meet or refuse the image
(spec 3.1.2); bit 16 (the "a.out kludge") says the header's address fields
describe where to load the file, otherwise the file is an ELF32 executable
whose PT_LOAD segments go to their physical addresses (p_paddr).

The kernel is entered in 32-bit protected mode with paging off (spec 3.2),
EAX = 0x2BADB002 and EBX = the multiboot information structure, which xvm
builds at MULTIBOOT_INFO_START (spec 3.3): memory sizes, the command line
(kernel path + arguments, as QEMU's hw/i386/multiboot.c passes it), the
modules (the initrd) and the e820 memory map.

    header = find_multiboot_header(data)
    kernel = load_multiboot_kernel(memory, data, header, "kernel.elf")
    info = build_multiboot_info(layout.MULTIBOOT_INFO_START, cmdline, modules, e820)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from xvm.arch.x86 import layout
from xvm.arch.x86.e820 import E820_RAM, E820Entry, require_low_ram
from xvm.errors import LoaderError
from xvm.loaders.elf import ELFCLASS32, EM_386, is_elf, parse_elf
from xvm.memory.guest_memory import GuestMemory

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
#: EAX at entry: tells the kernel a multiboot-compliant loader started it.
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MULTIBOOT_SEARCH = 8192
MULTIBOOT_HEADER_ALIGN = 4

# Header flags (spec 3.1.2).
MULTIBOOT_PAGE_ALIGN = 1 << 0  # modules page-aligned (xvm always does)
MULTIBOOT_MEMORY_INFO = 1 << 1  # mem_* and mmap_* wanted (xvm always provides them)
MULTIBOOT_VIDEO_MODE = 1 << 2  # video mode table wanted: xvm has no framebuffer and ignores it, as QEMU does
MULTIBOOT_AOUT_KLUDGE = 1 << 16  # load from the header's address fields
_REQUIREMENT_BITS = 0xFFFF
_SUPPORTED_REQUIREMENTS = MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO | MULTIBOOT_VIDEO_MODE

# Information structure flags (spec 3.3).
MULTIBOOT_INFO_MEMORY = 1 << 0
MULTIBOOT_INFO_CMDLINE = 1 << 2
MULTIBOOT_INFO_MODS = 1 << 3
MULTIBOOT_INFO_MEM_MAP = 1 << 6
MULTIBOOT_INFO_BOOT_LOADER_NAME = 1 << 9

#: magic, flags, checksum, then the a.out kludge fields header_addr .. entry_addr.
_HEADER = struct.Struct("<III")
_AOUT_FIELDS = struct.Struct("<IIIII")
#: struct multiboot_info up to and including the VBE fields (QEMU's MBI_SIZE).
MULTIBOOT_INFO_SIZE = 88
_INFO_OFFSETS = {
    "flags": 0,
    "mem_lower": 4,
    "mem_upper": 8,
    "cmdline": 16,
    "mods_count": 20,
    "mods_addr": 24,
    "mmap_length": 44,
    "mmap_addr": 48,
    "boot_loader_name": 64,
}
#: struct multiboot_mod_list: mod_start, mod_end, cmdline, pad.
_MODULE = struct.Struct("<IIII")
#: struct multiboot_mmap_entry: size (of the rest, 20), addr, len, type.
_MMAP_ENTRY = struct.Struct("<IQQI")
BOOT_LOADER_NAME = "xvm"

_FORMAT_HINT = "link the kernel as a 32-bit ELF with a multiboot header, or set the a.out kludge flag"


@dataclass(frozen=True)
class MultibootHeader:
    """A multiboot header found at file offset `offset`; the address fields only with the a.out kludge."""

    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0

    @property
    def aout_kludge(self) -> bool:
        return bool(self.flags & MULTIBOOT_AOUT_KLUDGE)


def find_multiboot_header(data: bytes) -> Optional[MultibootHeader]:
    """The first valid multiboot header (magic + checksum) in the first 8 KiB, or None."""
    limit = min(len(data), MULTIBOOT_SEARCH) - _HEADER.size
    for offset in range(0, limit + 1, MULTIBOOT_HEADER_ALIGN):
        magic, flags, checksum = _HEADER.unpack_from(data, offset)
        if magic != MULTIBOOT_HEADER_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if not flags & MULTIBOOT_AOUT_KLUDGE:
            return MultibootHeader(offset, flags)
        if offset + _HEADER.size + _AOUT_FIELDS.size > len(data):
            return None
        return MultibootHeader(offset, flags, *_AOUT_FIELDS.unpack_from(data, offset + _HEADER.size))
    return None


@dataclass(frozen=True)
class MultibootKernel:
    """A placed kernel: entered at `entry`, occupying [start, end) including its bss."""

    entry: int
    start: int
    end: int
    format: str


@dataclass(frozen=True)
class MultibootModule:
    """A boot module in guest memory, [start, end), with the string the kernel sees for it."""

    start: int
    end: int
    string: str


def _xvm_areas() -> tuple[tuple[int, int, str], ...]:
    """Low-memory ranges xvm writes for a multiboot boot; a kernel may not load over them."""
    return (
        (layout.BOOT_GDT_START, layout.BOOT_IDT_START, "boot GDT"),
        (layout.MULTIBOOT_INFO_START, layout.MULTIBOOT_INFO_START + layout.MULTIBOOT_INFO_MAX_SIZE, "multiboot info"),
        # Up to the BIOS area only: `ld -Ttext=0x100000` puts the ELF headers in a PT_LOAD segment
        # at 0xFF000, which QEMU loads too.
        (layout.EBDA_START, layout.BIOS_ROM_START, "MP and ACPI tables"),
    )


def _check_chunk(memory: GuestMemory, start: int, end: int, name: str) -> None:
    if end > 1 << 32:
        raise LoaderError(f"{name} loads at {start:#x}-{end:#x}, beyond 4 GiB: {_FORMAT_HINT}")
    for area_start, area_end, what in _xvm_areas():
        if start < area_end and area_start < end:
            raise LoaderError(
                f"{name} loads at {start:#x}-{end:#x}, over xvm's {what} at {area_start:#x}: link it at 1 MiB or above"
            )
    require_low_ram(memory, end, f"kernel {name}")


def _aout_chunks(data: bytes, header: MultibootHeader, name: str) -> tuple[list[tuple[int, bytes, int]], int]:
    """(address, file bytes, memory size) to load and the entry point, from the a.out kludge fields."""
    h = header
    load_offset = h.offset - (h.header_addr - h.load_addr)
    if h.header_addr < h.load_addr or load_offset < 0:
        raise LoaderError(f"{name}: multiboot header_addr {h.header_addr:#x} is not inside the loaded image")
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise LoaderError(f"{name}: multiboot load_end_addr {h.load_end_addr:#x} is below load_addr")
        load_size = h.load_end_addr - h.load_addr
        if load_offset + load_size > len(data):
            raise LoaderError(f"{name}: multiboot load_end_addr reaches past the end of the file; it is truncated")
    else:
        load_size = len(data) - load_offset
    mem_size = load_size
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise LoaderError(f"{name}: multiboot bss_end_addr {h.bss_end_addr:#x} is below the end of the image")
        mem_size = h.bss_end_addr - h.load_addr
    return [(h.load_addr, data[load_offset:load_offset + load_size], mem_size)], h.entry_addr


def _elf_chunks(data: bytes, name: str) -> tuple[list[tuple[int, bytes, int]], int]:
    """PT_LOAD segments at p_paddr and the entry point, translated to physical like GRUB 2 does."""
    if not is_elf(data):
        raise LoaderError(f"{name} has a multiboot header but is not ELF and has no a.out kludge: {_FORMAT_HINT}")
    elf = parse_elf(data, name)
    if elf.elf_class != ELFCLASS32 or elf.machine != EM_386:
        raise LoaderError(f"{name} is a {elf.bits}-bit ELF; multiboot v1 loads 32-bit i386 ELF kernels: {_FORMAT_HINT}")
    segments = elf.load_segments()
    if not segments:
        raise LoaderError(f"{name}: the ELF file has no loadable segment; the file is damaged")
    entry = elf.entry
    # GRUB 2 (loader/multiboot_elfxx.c): an entry inside a segment's virtual range is a virtual address.
    for seg in segments:
        if seg.vaddr <= elf.entry < seg.vaddr + seg.memsz:
            entry = elf.entry - seg.vaddr + seg.paddr
            break
    return [(seg.paddr, seg.data(data), seg.memsz) for seg in segments], entry


def load_multiboot_kernel(memory: GuestMemory, data: bytes, header: MultibootHeader, name: str) -> MultibootKernel:
    """Check the header's requirements, then copy the kernel into guest RAM (bss zeroed)."""
    unsupported = header.flags & _REQUIREMENT_BITS & ~_SUPPORTED_REQUIREMENTS
    if unsupported:
        raise LoaderError(
            f"{name}: multiboot header requires features {unsupported:#x} xvm does not provide; "
            "drop those flags (xvm supports page alignment, memory info and video-mode hints)"
        )
    if header.aout_kludge:
        chunks, entry = _aout_chunks(data, header, name)
        fmt = "a.out kludge"
    else:
        chunks, entry = _elf_chunks(data, name)
        fmt = "ELF32"
    for addr, _, mem_size in chunks:
        _check_chunk(memory, addr, addr + mem_size, name)
    for addr, blob, mem_size in chunks:
        memory.write(addr, blob)
        memory.fill(addr + len(blob), mem_size - len(blob))
    start = min(addr for addr, _, _ in chunks)
    end = max(addr + mem_size for addr, _, mem_size in chunks)
    return MultibootKernel(entry=entry, start=start, end=end, format=fmt)


def place_modules(
    memory: GuestMemory, modules: list[tuple[str, bytes]], kernel_end: int
) -> list[MultibootModule]:
    """Copy each (string, contents) page-aligned after the kernel, as QEMU and GRUB do."""
    placed = []
    addr = kernel_end
    for string, blob in modules:
        addr = (addr + layout.PAGE_SIZE - 1) & ~(layout.PAGE_SIZE - 1)
        require_low_ram(memory, addr + len(blob), f"module {string}")
        memory.write(addr, blob)
        placed.append(MultibootModule(addr, addr + len(blob), string))
        addr += len(blob)
    return placed


def build_multiboot_info(
    base: int, cmdline: str, modules: list[MultibootModule], e820: list[E820Entry]
) -> bytes:
    """The information structure and everything it points to, to be copied to `base`.

    Layout: struct multiboot_info, the mmap, the module list, then NUL-terminated strings.
    mem_lower/mem_upper are the usable RAM at 0 and at 1 MiB, in KiB (spec 3.3).
    """
    mmap = b"".join(_MMAP_ENTRY.pack(_MMAP_ENTRY.size - 4, e.addr, e.size, e.type) for e in e820)
    mmap_addr = base + MULTIBOOT_INFO_SIZE
    mods_addr = mmap_addr + len(mmap)
    strings = bytearray()
    strings_addr = mods_addr + len(modules) * _MODULE.size

    def add_string(text: str) -> int:
        addr = strings_addr + len(strings)
        strings.extend(text.encode() + b"\0")
        return addr

    mods = b"".join(_MODULE.pack(m.start, m.end, add_string(m.string), 0) for m in modules)
    ram = {e.addr: e.size for e in e820 if e.type == E820_RAM}
    info = bytearray(MULTIBOOT_INFO_SIZE)
    fields = {
        "flags": MULTIBOOT_INFO_MEMORY
        | MULTIBOOT_INFO_CMDLINE
        | MULTIBOOT_INFO_MODS
        | MULTIBOOT_INFO_MEM_MAP
        | MULTIBOOT_INFO_BOOT_LOADER_NAME,
        "mem_lower": ram.get(0, 0) // 1024,
        "mem_upper": ram.get(layout.HIGH_MEMORY_START, 0) // 1024,
        "cmdline": add_string(cmdline),
        "mods_count": len(modules),
        "mods_addr": mods_addr,
        "mmap_length": len(mmap),
        "mmap_addr": mmap_addr,
        "boot_loader_name": add_string(BOOT_LOADER_NAME),
    }
    for field, value in fields.items():
        struct.pack_into("<I", info, _INFO_OFFSETS[field], value)
    blob = bytes(info) + mmap + mods + bytes(strings)
    if len(blob) > layout.MULTIBOOT_INFO_MAX_SIZE:
        raise LoaderError(
            f"the multiboot information is {len(blob)} bytes, more than the {layout.MULTIBOOT_INFO_MAX_SIZE} "
            "xvm reserves: shorten --append"
        )
    return blob
