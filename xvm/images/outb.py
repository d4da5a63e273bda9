"""A 189-byte static x86-64 program that writes one byte from stdin to an I/O port.

/init hands the command's exit status to the VMM's debug-exit port (0xF4)
through /dev/port, but /dev/port needs CONFIG_DEVPORT, which Debian's cloud
kernel lacks. This program is the fallback: ioperm(port, 1, 1) then OUT. It is
generated here byte by byte (no toolchain, nothing binary in the repository)
and is only ever run inside the guest:

    printf '\\007' | xvmexit      # OUT 0xF4, 7

Exit status 0 when the byte was written, 1 when stdin was empty or ioperm
failed (no CAP_SYS_RAWIO, or a kernel without CONFIG_X86_IOPL_IOPERM).
"""

from __future__ import annotations

import struct

LOAD_ADDRESS = 0x400000
ELF_HEADER_SIZE = 64
PROGRAM_HEADER_SIZE = 56

SYS_READ = 0
SYS_IOPERM = 173
SYS_EXIT = 60


def _code(port: int) -> bytes:
    """The machine code, hand-assembled; the red zone below RSP is the one-byte buffer."""
    if not 0 <= port <= 0xFF:
        raise ValueError("OUT imm8 reaches ports 0-0xFF only")
    read_and_check = (
        b"\x31\xc0"  # xor eax, eax            ; SYS_read
        b"\x31\xff"  # xor edi, edi            ; fd 0
        b"\x48\x8d\x74\x24\xf8"  # lea rsi, [rsp-8]
        b"\xba\x01\x00\x00\x00"  # mov edx, 1
        b"\x0f\x05"  # syscall
        b"\x83\xf8\x01"  # cmp eax, 1
    )
    ioperm = (
        b"\xb8" + struct.pack("<I", SYS_IOPERM)  # mov eax, SYS_ioperm
        + b"\xbf" + struct.pack("<I", port)  # mov edi, port
        + b"\xbe\x01\x00\x00\x00"  # mov esi, 1             ; one port
        b"\xba\x01\x00\x00\x00"  # mov edx, 1             ; turn access on
        b"\x0f\x05"  # syscall
        b"\x85\xc0"  # test eax, eax
    )
    out_and_exit = (
        b"\x8a\x44\x24\xf8"  # mov al, [rsp-8]
        b"\xe6" + bytes([port])  # out port, al
        + b"\x31\xff"  # xor edi, edi           ; status 0
    )
    fail = b"\xbf\x01\x00\x00\x00"  # mov edi, 1             ; status 1
    exit_ = b"\xb8" + struct.pack("<I", SYS_EXIT) + b"\x0f\x05"  # mov eax, SYS_exit; syscall
    # Branches (rel8): jne fail after the read check and after ioperm; jmp exit after OUT.
    jmp_exit = b"\xeb" + bytes([len(fail)])
    jne_fail_2 = b"\x75" + bytes([len(out_and_exit) + len(jmp_exit)])
    jne_fail_1 = b"\x75" + bytes([len(ioperm) + len(jne_fail_2) + len(out_and_exit) + len(jmp_exit)])
    return read_and_check + jne_fail_1 + ioperm + jne_fail_2 + out_and_exit + jmp_exit + fail + exit_


def outb_elf(port: int) -> bytes:
    """A static ELF64 executable (one PT_LOAD segment) running `_code(port)`."""
    code = _code(port)
    entry = LOAD_ADDRESS + ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE
    size = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, little-endian, EV_CURRENT, SysV ABI
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # e_type: ET_EXEC
        62,  # e_machine: EM_X86_64
        1,  # e_version
        entry,  # e_entry
        ELF_HEADER_SIZE,  # e_phoff
        0,  # e_shoff: no section headers
        0,  # e_flags
        ELF_HEADER_SIZE,  # e_ehsize
        PROGRAM_HEADER_SIZE,  # e_phentsize
        1,  # e_phnum
        64,  # e_shentsize
        0,  # e_shnum
        0,  # e_shstrndx
    )
    program_header = struct.pack(
        "<IIQQQQQQ",
        1,  # p_type: PT_LOAD
        5,  # p_flags: PF_R | PF_X
        0,  # p_offset: the whole file, headers included
        LOAD_ADDRESS,  # p_vaddr
        LOAD_ADDRESS,  # p_paddr
        size,  # p_filesz
        size,  # p_memsz
        0x1000,  # p_align
    )
    return header + program_header + code
