"""The generated ioperm+OUT program (never run on the host: it would write a host port)."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from xvm.images.outb import LOAD_ADDRESS, outb_elf


def test_elf_headers():
    elf = outb_elf(0xF4)
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1
    e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", elf, 16)
    assert (e_type, e_machine, e_phoff) == (2, 62, 64)
    p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz = struct.unpack_from("<IIQQQQQ", elf, 64)
    assert (p_type, p_flags, p_offset, p_vaddr) == (1, 5, 0, LOAD_ADDRESS)
    assert p_filesz == p_memsz == len(elf)
    assert e_entry == LOAD_ADDRESS + 120


@pytest.mark.skipif(shutil.which("objdump") is None, reason="binutils is not installed")
def test_disassembly(tmp_path):
    path = tmp_path / "xvmexit"
    path.write_bytes(outb_elf(0xF4))
    listing = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", "--start-address=120", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mnemonics = [line.split("\t")[2].split()[0] for line in listing.splitlines() if line.count("\t") >= 2]
    assert mnemonics == [
        "xor", "xor", "lea", "mov", "syscall", "cmp", "jne",  # read(0, buf, 1) == 1
        "mov", "mov", "mov", "mov", "syscall", "test", "jne",  # ioperm(port, 1, 1) == 0
        "mov", "out", "xor", "jmp",  # OUT, status 0
        "mov",  # status 1
        "mov", "syscall",  # exit
    ]  # fmt: skip
    assert "out    %al,$0xf4" in listing
    targets = [line.split()[-1] for line in listing.splitlines() if "jne" in line or "jmp" in line]
    assert targets == ["0xb1", "0xb1", "0xb6"]


def test_port_range():
    with pytest.raises(ValueError):
        outb_elf(0x3F8)
