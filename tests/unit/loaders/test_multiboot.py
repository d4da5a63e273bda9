"""Multiboot v1 header search, kernel loading and the information structure (spec 0.6.96)."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.e820 import build_e820_map
from xvm.errors import LoaderError
from xvm.loaders.multiboot import (
    MULTIBOOT_INFO_SIZE,
    MultibootModule,
    build_multiboot_info,
    find_multiboot_header,
    load_multiboot_kernel,
    place_modules,
)

MiB = 1 << 20


def test_header_found_on_a_4_byte_boundary_in_the_first_8k(make_aout_kludge):
    data = make_aout_kludge(header_offset=0x100)
    header = find_multiboot_header(data)
    assert header is not None and header.offset == 0x100 and header.aout_kludge
    assert header.load_addr == 0x100000 and header.entry_addr == 0x100020


def test_header_not_found_when_misaligned_late_or_bad_checksum(make_aout_kludge):
    assert find_multiboot_header(b"\0\0" + make_aout_kludge()) is None
    assert find_multiboot_header(make_aout_kludge(header_offset=8192)) is None
    data = bytearray(make_aout_kludge())
    data[8] ^= 1
    assert find_multiboot_header(bytes(data)) is None
    assert find_multiboot_header(b"") is None


def test_elf_segments_load_at_paddr_with_bss_zeroed(make_multiboot_elf, memory):
    memory.fill(0x100000, 0x3000, 0xCC)
    data = make_multiboot_elf(
        segments=((0x100000, 0x100000, b"\x90" * 64, 0x2000), (0x200000, 0x200000, b"DATA", 0x10)), entry=0x100010
    )
    kernel = load_multiboot_kernel(memory, data, find_multiboot_header(data), "k.elf")
    assert kernel.format == "ELF32"
    assert kernel.entry == 0x100010
    assert (kernel.start, kernel.end) == (0x100000, 0x200010)
    assert memory.read(0x10000C, 64) == b"\x90" * 64  # after the 12-byte header
    assert memory.read(0x100000 + 76, 0x2000 - 76) == bytes(0x2000 - 76)  # bss zeroed
    assert memory.read(0x200000, 0x10) == b"DATA" + bytes(12)


def test_elf_headers_segment_below_1mib_loads_like_qemu(make_multiboot_elf, memory):
    # What `ld -m elf_i386 -Ttext=0x100000` makes: the ELF headers in a PT_LOAD at 0xFF000.
    data = make_multiboot_elf(
        segments=((0x100000, 0x100000, b"\x90" * 64, 0x100), (0xFF000, 0xFF000, b"\x7fELF", 0x100)), entry=0x10000C
    )
    kernel = load_multiboot_kernel(memory, data, find_multiboot_header(data), "k.elf")
    assert (kernel.start, kernel.end) == (0xFF000, 0x100100)


def test_higher_half_entry_is_translated_to_physical(make_multiboot_elf, memory):
    data = make_multiboot_elf(segments=((0x100000, 0xC0100000, b"\x90" * 64, 0x100),), entry=0xC0100020)
    kernel = load_multiboot_kernel(memory, data, find_multiboot_header(data), "k.elf")
    assert kernel.entry == 0x100020


def test_aout_kludge_loads_the_file_and_zeroes_bss(make_aout_kludge, memory):
    memory.fill(0x100000, 0x5000, 0xCC)
    data = make_aout_kludge(code=b"\xf4" * 100, bss_end_addr=0x104000)
    kernel = load_multiboot_kernel(memory, data, find_multiboot_header(data), "k.bin")
    assert kernel.format == "a.out kludge"
    assert (kernel.start, kernel.end, kernel.entry) == (0x100000, 0x104000, 0x100020)
    assert memory.read(0x100000, len(data)) == data
    assert memory.read(0x100000 + len(data), 0x4000 - len(data)) == bytes(0x4000 - len(data))
    assert memory.read_u8(0x104000) == 0xCC


def test_aout_kludge_load_end_addr_limits_the_copy(make_aout_kludge, memory):
    data = make_aout_kludge(code=b"\xf4" * 100, load_end_addr=0x100040, bss_end_addr=0)
    kernel = load_multiboot_kernel(memory, data, find_multiboot_header(data), "k.bin")
    assert kernel.end == 0x100040
    assert memory.read(0x100000, 0x40) == data[:0x40]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"load_end_addr": 0x200000}, "truncated"),
        ({"load_end_addr": 0xF0000}, "load_end_addr 0xf0000 is below load_addr"),
        ({"bss_end_addr": 0x100010}, "bss_end_addr 0x100010 is below the end"),
        ({"load_addr": 0x30000}, r"over xvm's multiboot info at 0x30000: link it at 1 MiB or above"),
        ({"load_addr": 0x9F000}, "over xvm's MP and ACPI tables"),
        ({"load_addr": 0x8000000, "bss_end_addr": 0}, r"needs 129 MiB .* use --mem 129M or more"),
        ({"flags": 0x10013}, "requires features 0x10 xvm does not provide"),
    ],
)
def test_bad_aout_images_are_refused(make_aout_kludge, memory, kwargs, message):
    data = make_aout_kludge(**kwargs)
    with pytest.raises(LoaderError, match=message):
        load_multiboot_kernel(memory, data, find_multiboot_header(data), "k.bin")


def test_header_addr_outside_the_image_is_refused(make_aout_kludge, memory):
    data = make_aout_kludge(header_offset=16)
    header = find_multiboot_header(data)
    bad = replace(header, header_addr=header.load_addr + 32)  # claims the header is further in than it is
    with pytest.raises(LoaderError, match="header_addr .* is not inside the loaded image"):
        load_multiboot_kernel(memory, data, bad, "k.bin")


def test_64bit_elf_without_kludge_is_refused(make_multiboot_elf, memory):
    data = make_multiboot_elf(elf_class=2, machine=62)
    with pytest.raises(LoaderError, match="64-bit ELF; multiboot v1 loads 32-bit"):
        load_multiboot_kernel(memory, data, find_multiboot_header(data), "k64.elf")


def test_non_elf_without_kludge_is_refused(memory):
    data = bytes(16) + struct.pack("<III", 0x1BADB002, 3, -(0x1BADB002 + 3) & 0xFFFFFFFF)
    with pytest.raises(LoaderError, match="not ELF and has no a.out kludge"):
        load_multiboot_kernel(memory, data, find_multiboot_header(data), "k.bin")


def test_modules_go_page_aligned_after_the_kernel(memory):
    modules = place_modules(memory, [("one arg", b"A" * 10), ("two", b"B" * 5000)], 0x104321)
    assert modules[0] == MultibootModule(0x105000, 0x10500A, "one arg")
    assert modules[1] == MultibootModule(0x106000, 0x106000 + 5000, "two")
    assert memory.read(0x106000, 5000) == b"B" * 5000


def test_module_that_does_not_fit_names_the_memory_needed(memory):
    with pytest.raises(LoaderError, match=r"module big needs 66 MiB .*--mem 66M"):
        place_modules(memory, [("big", bytes(65 * MiB))], 0x100000)


def _walk_mmap(memory, addr: int, length: int) -> list[tuple[int, int, int]]:
    """Walk the mmap the way the spec says a kernel must: each entry's size field comes first."""
    entries = []
    end = addr + length
    while addr < end:
        size = memory.read_u32(addr)
        base, span, kind = struct.unpack("<QQI", memory.read(addr + 4, 20))
        entries.append((base, span, kind))
        addr += size + 4
    return entries


def _cstring(memory, addr: int) -> str:
    data = memory.read(addr, 256)
    return data[: data.index(b"\0")].decode()


def test_info_structure_contents(memory):
    e820 = build_e820_map(memory)
    modules = [MultibootModule(0x200000, 0x201000, "/tmp/initrd.img")]
    base = layout.MULTIBOOT_INFO_START
    memory.write(base, build_multiboot_info(base, "/k.elf console=ttyS0", modules, e820))
    flags = memory.read_u32(base)
    assert flags == 0x1 | 0x4 | 0x8 | 0x40 | 0x200
    assert memory.read_u32(base + 4) == 639  # mem_lower: KiB below the EBDA
    assert memory.read_u32(base + 8) == 63 * 1024  # mem_upper: KiB from 1 MiB to the end of RAM
    assert _cstring(memory, memory.read_u32(base + 16)) == "/k.elf console=ttyS0"
    assert memory.read_u32(base + 20) == 1
    mods_addr = memory.read_u32(base + 24)
    start, end, string, pad = struct.unpack("<IIII", memory.read(mods_addr, 16))
    assert (start, end, pad) == (0x200000, 0x201000, 0)
    assert _cstring(memory, string) == "/tmp/initrd.img"
    mmap = _walk_mmap(memory, memory.read_u32(base + 48), memory.read_u32(base + 44))
    assert mmap == [(e.addr, e.size, e.type) for e in e820]
    assert _cstring(memory, memory.read_u32(base + 64)) == "xvm"
    assert memory.read_u32(base + 48) == base + MULTIBOOT_INFO_SIZE


def test_oversized_info_asks_for_a_shorter_command_line(memory):
    with pytest.raises(LoaderError, match="shorten --append"):
        build_multiboot_info(layout.MULTIBOOT_INFO_START, "x" * layout.MULTIBOOT_INFO_MAX_SIZE, [], [])
