"""Synthetic kernel images, built byte by byte, so loader tests need no real kernel.

Fixtures return builder functions:
  make_bzimage(...)        a bzImage: real-mode setup with a setup header + a protected-mode payload
  make_multiboot_elf(...)  an ELF32 executable whose first segment starts with a multiboot header
  make_aout_kludge(...)    a flat binary with a multiboot header using the a.out kludge fields
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Callable

import pytest

from xvm.memory.guest_memory import GuestMemory

MiB = 1 << 20


def bzimage(
    *,
    version: int = 0x020F,
    setup_sects: int = 4,
    loadflags: int = 0x01,
    xloadflags: int = 0x01,
    kernel_alignment: int = 0x200000,
    relocatable: int = 1,
    pref_address: int = 0x1000000,
    init_size: int = 0x400000,
    cmdline_size: int = 2047,
    initrd_addr_max: int = 0x7FFFFFFF,
    payload: bytes = b"\x90" * 0x1000,
) -> bytes:
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200] = 0xEB
    setup[0x201] = 0x6A  # header ends at 0x26C (kernel_info_offset), as in Linux 6.1
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload


def multiboot_header(flags: int, *aout_fields: int) -> bytes:
    magic = 0x1BADB002
    return struct.pack("<III", magic, flags, -(magic + flags) & 0xFFFFFFFF) + struct.pack(
        f"<{len(aout_fields)}I", *aout_fields
    )


def multiboot_elf(
    *,
    segments: tuple[tuple[int, int, bytes, int], ...] = ((0x100000, 0x100000, b"\xf4" * 64, 0x2000),),
    entry: int = 0x10000C,
    flags: int = 0x3,
    elf_class: int = 1,
    machine: int = 3,
    with_header: bool = True,
    notes: tuple[tuple[bytes, int, bytes], ...] = (),
) -> bytes:
    """ELF file; `segments` are (paddr, vaddr, data, memsz); a multiboot header opens segment 0's data.

    `notes` (owner, type, desc) go into one PT_NOTE segment after the loadable ones.
    """
    data_offset = 0x1000
    body = bytearray()
    phdrs = []

    def phdr(p_type: int, offset: int, vaddr: int, paddr: int, filesz: int, memsz: int) -> bytes:
        if elf_class == 1:
            return struct.pack("<IIIIIIII", p_type, offset, vaddr, paddr, filesz, memsz, 5, 0x1000)
        return struct.pack("<IIQQQQQQ", p_type, 5, offset, vaddr, paddr, filesz, memsz, 0x1000)

    for i, (paddr, vaddr, blob, memsz) in enumerate(segments):
        if i == 0 and with_header:
            blob = multiboot_header(flags) + blob
        offset = data_offset + len(body)
        body.extend(blob)
        phdrs.append(phdr(1, offset, vaddr, paddr, len(blob), max(memsz, len(blob))))
    if notes:
        note_blob = b"".join(elf_note(*note) for note in notes)
        phdrs.append(phdr(4, data_offset + len(body), 0, 0, len(note_blob), len(note_blob)))
        body.extend(note_blob)
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    if elf_class == 1:
        ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, 52, 0, 0, 52, 32, len(phdrs), 40, 0, 0)
    else:
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, 64, 0, 0, 64, 56, len(phdrs), 64, 0, 0)
    image = bytearray(ehdr + b"".join(phdrs))
    image.extend(bytes(data_offset - len(image)))
    return bytes(image + body)


def elf_note(owner: bytes, note_type: int, desc: bytes) -> bytes:
    """One note: namesz, descsz, type, then name and desc each padded to 4 bytes."""
    name = owner + b"\0"
    return struct.pack("<III", len(name), len(desc), note_type) + _pad4(name) + _pad4(desc)


def _pad4(blob: bytes) -> bytes:
    return blob + bytes(-len(blob) % 4)


def pvh_vmlinux(*, entry: int = 0x1000600, paddr: int = 0x1000000, size: int = 0x3000, memsz: int = 0x5000) -> bytes:
    """A 64-bit vmlinux look-alike: one segment at 16 MiB linked high, the Xen PHYS32_ENTRY note (8 bytes)."""
    return multiboot_elf(
        segments=((paddr, 0xFFFFFFFF81000000, b"\x90" * size, memsz),),
        entry=paddr,
        elf_class=2,
        machine=62,
        with_header=False,
        notes=((b"GNU", 3, b"\x01" * 20), (b"Xen", 18, struct.pack("<Q", entry))),
    )


def aout_kludge(
    *,
    load_addr: int = 0x100000,
    code: bytes = b"\xf4" * 100,
    load_end_addr: int = 0,
    bss_end_addr: int = 0x104000,
    entry_addr: int = 0x100020,
    flags: int = 0x10003,
    header_offset: int = 0,
) -> bytes:
    """Flat image loaded from file offset 0 at `load_addr`; the header sits `header_offset` bytes in."""
    header = multiboot_header(
        flags, load_addr + header_offset, load_addr, load_end_addr, bss_end_addr, entry_addr
    )
    return bytes(header_offset) + header + code


@pytest.fixture
def make_bzimage() -> Callable[..., bytes]:
    return bzimage


@pytest.fixture
def make_multiboot_elf() -> Callable[..., bytes]:
    return multiboot_elf


@pytest.fixture
def make_pvh_vmlinux() -> Callable[..., bytes]:
    return pvh_vmlinux


@pytest.fixture
def make_aout_kludge() -> Callable[..., bytes]:
    return aout_kludge


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory.allocate(64 * MiB)
    yield mem
    mem.close()
