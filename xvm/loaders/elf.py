"""ELF executable parsing for loaders (System V gABI, "ELF Header" and "Program Header").

Only what a loader needs: class, machine, entry point and the PT_LOAD
segments. Every header field that points into the file is checked against the
file size before use, so a truncated or hostile image is a LoaderError, never
an IndexError or a silent short copy.

    image = parse_elf(data, "kernel.elf")
    for seg in image.load_segments():
        memory.write(seg.paddr, seg.data(data)); ...
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xvm.errors import LoaderError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC = 2
ET_DYN = 3
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
#: Program header types whose contents a loader reads (so their file ranges are checked).
_READ_TYPES = (PT_LOAD, PT_NOTE)
_NOTE_HEADER = struct.Struct("<III")  # n_namesz, n_descsz, n_type

_IDENT_SIZE = 16
# e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize, e_phentsize, e_phnum
_EHDR = {ELFCLASS32: struct.Struct("<HHIIIIIHHH"), ELFCLASS64: struct.Struct("<HHIQQQIHHH")}
# Program headers: the two classes order their fields differently.
_PHDR32 = struct.Struct("<IIIIIIII")  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
_PHDR64 = struct.Struct("<IIQQQQQQ")  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


@dataclass(frozen=True)
class ProgramHeader:
    """One program header; offsets and sizes already checked against the file."""

    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int

    def data(self, image: bytes) -> bytes:
        """The segment's bytes in the file (filesz of them; the rest up to memsz is bss)."""
        return image[self.offset:self.offset + self.filesz]


@dataclass(frozen=True)
class ElfImage:
    elf_class: int
    machine: int
    type: int
    entry: int
    segments: tuple[ProgramHeader, ...]

    @property
    def bits(self) -> int:
        return 32 if self.elf_class == ELFCLASS32 else 64

    def load_segments(self) -> list[ProgramHeader]:
        """PT_LOAD segments with something in memory."""
        return [s for s in self.segments if s.type == PT_LOAD and s.memsz > 0]

    def notes(self, data: bytes, name: str) -> list[ElfNote]:
        """Every note in the PT_NOTE segments (gABI "Note Section"), each checked to lie in its segment."""
        found = []
        for seg in self.segments:
            if seg.type != PT_NOTE:
                continue
            blob = seg.data(data)
            offset = 0
            while offset + _NOTE_HEADER.size <= len(blob):
                namesz, descsz, note_type = _NOTE_HEADER.unpack_from(blob, offset)
                name_at = offset + _NOTE_HEADER.size
                desc_at = name_at + _align4(namesz)
                end = desc_at + _align4(descsz)
                if desc_at + descsz > len(blob):
                    raise LoaderError(f"{name}: ELF note at segment offset {offset} runs past its segment; damaged")
                owner = blob[name_at:name_at + namesz].rstrip(b"\0")
                found.append(ElfNote(owner, note_type, blob[desc_at:desc_at + descsz]))
                offset = end
        return found


def _align4(value: int) -> int:
    return (value + 3) & ~3


@dataclass(frozen=True)
class ElfNote:
    """One ELF note: owner name (without the NUL), type, descriptor bytes."""

    name: bytes
    type: int
    desc: bytes


def parse_elf(data: bytes, name: str) -> ElfImage:
    """Parse the ELF header and program headers of `data` (`name` is for messages)."""
    if not is_elf(data):
        raise LoaderError(f"{name} is not an ELF file (no \\x7fELF magic)")
    if len(data) < _IDENT_SIZE:
        raise LoaderError(f"{name}: ELF header is truncated; the file is damaged")
    elf_class, encoding = data[4], data[5]
    if elf_class not in _EHDR:
        raise LoaderError(f"{name}: unknown ELF class {elf_class}; the file is damaged")
    if encoding != ELFDATA2LSB:
        raise LoaderError(f"{name}: big-endian ELF; build the kernel for x86")
    ehdr = _EHDR[elf_class]
    if len(data) < _IDENT_SIZE + ehdr.size:
        raise LoaderError(f"{name}: ELF header is truncated; the file is damaged")
    e_type, machine, _, entry, phoff, _, _, _, phentsize, phnum = ehdr.unpack_from(data, _IDENT_SIZE)
    phdr = _PHDR32 if elf_class == ELFCLASS32 else _PHDR64
    if phnum and phentsize < phdr.size:
        raise LoaderError(f"{name}: ELF program header size {phentsize} is too small; the file is damaged")
    if phoff + phnum * phentsize > len(data):
        raise LoaderError(f"{name}: ELF program headers run past the end of the file; the file is truncated")
    segments = []
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if elf_class == ELFCLASS32:
            p_type, offset, vaddr, paddr, filesz, memsz, flags, _ = fields
        else:
            p_type, flags, offset, vaddr, paddr, filesz, memsz, _ = fields
        if p_type in _READ_TYPES and offset + filesz > len(data):
            raise LoaderError(f"{name}: ELF segment {i} runs past the end of the file; the file is truncated")
        if p_type == PT_LOAD and filesz > memsz:
            raise LoaderError(f"{name}: ELF segment {i} has p_filesz > p_memsz; the file is damaged")
        segments.append(ProgramHeader(p_type, offset, vaddr, paddr, filesz, memsz, flags))
    return ElfImage(elf_class, machine, e_type, entry, tuple(segments))
