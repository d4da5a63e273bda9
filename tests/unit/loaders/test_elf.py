"""ELF parsing: fields, and every offset checked against the file size."""

from __future__ import annotations

import struct

import pytest

from xvm.errors import LoaderError
from xvm.loaders.elf import ELFCLASS32, ELFCLASS64, EM_386, EM_X86_64, PT_LOAD, parse_elf


def test_elf32_fields(make_multiboot_elf):
    data = make_multiboot_elf(segments=((0x100000, 0xC0100000, b"abc", 0x40),), entry=0xC0100000)
    elf = parse_elf(data, "k")
    assert (elf.elf_class, elf.machine, elf.entry, elf.bits) == (ELFCLASS32, EM_386, 0xC0100000, 32)
    (seg,) = elf.load_segments()
    assert (seg.type, seg.paddr, seg.vaddr, seg.memsz) == (PT_LOAD, 0x100000, 0xC0100000, 0x40)
    assert seg.data(data) == data[0x1000:0x1000 + 15]  # 12-byte multiboot header + "abc"


def test_elf64_fields(make_multiboot_elf):
    data = make_multiboot_elf(elf_class=2, machine=EM_X86_64, entry=0x1000000)
    elf = parse_elf(data, "k")
    assert (elf.elf_class, elf.machine, elf.entry, elf.bits) == (ELFCLASS64, EM_X86_64, 0x1000000, 64)
    assert elf.load_segments()[0].paddr == 0x100000


def test_not_elf():
    with pytest.raises(LoaderError, match="not an ELF file"):
        parse_elf(b"MZ" + bytes(100), "k")


@pytest.mark.parametrize("cut", [10, 30, 60, 0x1005])
def test_truncated_files_are_refused(make_multiboot_elf, cut):
    data = make_multiboot_elf()
    with pytest.raises(LoaderError, match="truncated|damaged"):
        parse_elf(data[:cut], "k")


def test_filesz_larger_than_memsz_is_refused(make_multiboot_elf):
    data = bytearray(make_multiboot_elf())
    struct.pack_into("<I", data, 52 + 20, 1)  # p_memsz of the first program header
    with pytest.raises(LoaderError, match="p_filesz > p_memsz"):
        parse_elf(bytes(data), "k")


def test_program_headers_past_the_end_are_refused(make_multiboot_elf):
    data = bytearray(make_multiboot_elf())
    struct.pack_into("<I", data, 28, 0xFFFFFF00)  # e_phoff
    with pytest.raises(LoaderError, match="program headers run past the end"):
        parse_elf(bytes(data), "k")


def test_tiny_phentsize_is_refused(make_multiboot_elf):
    data = bytearray(make_multiboot_elf())
    struct.pack_into("<H", data, 42, 8)  # e_phentsize
    with pytest.raises(LoaderError, match="program header size 8 is too small"):
        parse_elf(bytes(data), "k")


def test_big_endian_is_refused(make_multiboot_elf):
    data = bytearray(make_multiboot_elf())
    data[5] = 2
    with pytest.raises(LoaderError, match="big-endian"):
        parse_elf(bytes(data), "k")


def test_notes_are_read_from_pt_note(make_multiboot_elf):
    data = make_multiboot_elf(notes=((b"GNU", 3, b"abcde"), (b"Xen", 18, b"\1\2\3\4")))
    notes = parse_elf(data, "k").notes(data, "k")
    assert [(n.name, n.type, n.desc) for n in notes] == [(b"GNU", 3, b"abcde"), (b"Xen", 18, b"\1\2\3\4")]


def test_note_running_past_its_segment_is_refused(make_multiboot_elf):
    data = bytearray(make_multiboot_elf(notes=((b"Xen", 18, b"\1\2\3\4"),)))
    note = data.index(b"Xen\0") - 12
    struct.pack_into("<I", data, note + 4, 4096)  # descsz
    with pytest.raises(LoaderError, match="note .* runs past its segment"):
        parse_elf(bytes(data), "k").notes(bytes(data), "k")
