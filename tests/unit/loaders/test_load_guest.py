"""load_guest(): format detection, everything it writes, and each user-facing error."""

from __future__ import annotations

import struct

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.boot_cpu import BOOT_CS, BOOT_DS
from xvm.arch.x86.regs import CR0_PE, CR0_PG, EFER_LMA
from xvm.config import BootConfig
from xvm.errors import ConfigError, LoaderError
from xvm.loaders import LoadedGuest, is_linux_kernel, load_guest


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _cstring(memory, addr: int) -> bytes:
    data = memory.read(addr, 4096)
    return data[: data.index(b"\0")]


def test_linux_bzimage_with_initrd(tmp_path, memory, make_bzimage):
    kernel = _write(tmp_path, "bzImage", make_bzimage())
    initrd = _write(tmp_path, "initrd", b"\x07" * 3000)
    guest = load_guest(memory, BootConfig(kernel=kernel, initrd=initrd, cmdline="console=ttyS0 quiet"), 2)
    assert isinstance(guest, LoadedGuest)
    assert guest.kind == "linux"
    assert guest.description == "Linux bzImage, boot protocol 2.15, 64-bit entry"
    assert guest.kernel_range == (0x100000, 0x1400000)
    start, end = guest.initrd_range
    assert end - start == 3000 and start % layout.PAGE_SIZE == 0 and start >= 0x1400000
    # Boot state: 64-bit entry at +0x200 with RSI = zero page.
    assert guest.regs.rip == 0x100200 and guest.regs.rsi == layout.ZERO_PAGE_START
    assert guest.sregs.cr0 & CR0_PG and guest.sregs.efer & EFER_LMA
    assert guest.sregs.cs.selector == BOOT_CS and guest.sregs.cs.l == 1
    # Zero page, command line, initrd.
    zp = layout.ZERO_PAGE_START
    assert memory.read(zp + 0x202, 4) == b"HdrS"
    assert memory.read_u32(zp + 0x228) == layout.CMDLINE_START
    assert _cstring(memory, layout.CMDLINE_START) == b"console=ttyS0 quiet"
    assert (memory.read_u32(zp + 0x218), memory.read_u32(zp + 0x21C)) == (start, 3000)
    assert memory.read(start, 3000) == b"\x07" * 3000
    assert memory.read_u8(zp + 0x1E8) == 3
    # Firmware tables and the identity map.
    assert memory.read(layout.MPTABLE_START, 4) == b"_MP_"
    assert memory.read(layout.ACPI_RSDP_START, 8) == b"RSD PTR "
    assert memory.read_u64(zp + 0x70) == layout.ACPI_RSDP_START
    assert memory.read_u64(layout.PML4_START) & ~0xFFF == layout.PDPTE_START


def test_multiboot_elf_with_module(tmp_path, memory, make_multiboot_elf):
    kernel = _write(tmp_path, "mb.elf", make_multiboot_elf())
    initrd = _write(tmp_path, "mod.bin", b"module!")
    guest = load_guest(memory, BootConfig(kernel=kernel, initrd=initrd, cmdline="hello=1"), 1)
    assert guest.kind == "multiboot"
    assert guest.description == "multiboot ELF32 kernel, entry 0x10000c"
    assert guest.kernel_range == (0x100000, 0x102000)
    assert guest.initrd_range == (0x102000, 0x102007)
    regs, sregs = guest.regs, guest.sregs
    assert (regs.rax, regs.rbx, regs.rip) == (0x2BADB002, layout.MULTIBOOT_INFO_START, 0x10000C)
    assert sregs.cr0 & CR0_PE and not sregs.cr0 & CR0_PG and sregs.efer == 0
    assert sregs.cs.db == 1 and sregs.ss.selector == BOOT_DS
    info = layout.MULTIBOOT_INFO_START
    assert _cstring(memory, memory.read_u32(info + 16)) == f"{kernel} hello=1".encode()
    mods = memory.read_u32(info + 24)
    assert struct.unpack("<II", memory.read(mods, 8)) == (0x102000, 0x102007)
    assert _cstring(memory, memory.read_u32(mods + 8)) == str(initrd).encode()
    assert memory.read(layout.MPTABLE_START, 4) == b"_MP_"


def test_aout_kludge_without_initrd(tmp_path, memory, make_aout_kludge):
    kernel = _write(tmp_path, "mb.bin", make_aout_kludge())
    guest = load_guest(memory, BootConfig(kernel=kernel, cmdline=""), 1)
    assert guest.initrd_range is None
    assert guest.description == "multiboot a.out kludge kernel, entry 0x100020"
    info = layout.MULTIBOOT_INFO_START
    assert memory.read_u32(info + 20) == 0  # mods_count
    assert _cstring(memory, memory.read_u32(info + 16)) == str(kernel).encode()


def test_no_kernel(memory):
    with pytest.raises(LoaderError, match="no kernel to boot: pass --kernel PATH, or run `xvm images build`"):
        load_guest(memory, BootConfig(), 1)


def test_missing_kernel_file(tmp_path, memory):
    with pytest.raises(LoaderError, match=r"kernel .*nope: no such file \(check --kernel"):
        load_guest(memory, BootConfig(kernel=tmp_path / "nope"), 1)


def test_missing_initrd_file(tmp_path, memory, make_bzimage):
    kernel = _write(tmp_path, "bzImage", make_bzimage())
    with pytest.raises(LoaderError, match=r"initrd .*gone: no such file \(check --initrd"):
        load_guest(memory, BootConfig(kernel=kernel, initrd=tmp_path / "gone"), 1)


def test_not_a_kernel(tmp_path, memory):
    kernel = _write(tmp_path, "notes.txt", b"hello world\n" * 100)
    with pytest.raises(LoaderError, match="is not a kernel xvm knows: xvm boots a Linux bzImage .*xvm images build"):
        load_guest(memory, BootConfig(kernel=kernel), 1)


def test_plain_elf_is_taken_for_a_vmlinux(tmp_path, memory, make_multiboot_elf):
    kernel = _write(tmp_path, "vmlinux", make_multiboot_elf(with_header=False))
    with pytest.raises(LoaderError, match=r"ELF file without a PVH entry or multiboot header: .*CONFIG_PVH"):
        load_guest(memory, BootConfig(kernel=kernel), 1)


def test_too_old_boot_protocol(tmp_path, memory, make_bzimage):
    kernel = _write(tmp_path, "bzImage", make_bzimage(version=0x0204))
    with pytest.raises(LoaderError, match=r"boot protocol 2\.04"):
        load_guest(memory, BootConfig(kernel=kernel), 1)


def test_command_line_too_long(tmp_path, memory, make_bzimage):
    kernel = _write(tmp_path, "bzImage", make_bzimage(cmdline_size=255))
    with pytest.raises(LoaderError, match="command line is 256 bytes; .* accepts at most 255: shorten --append"):
        load_guest(memory, BootConfig(kernel=kernel, cmdline="x" * 256), 1)


def test_too_many_cpus_for_the_mp_table(tmp_path, memory, make_bzimage):
    kernel = _write(tmp_path, "bzImage", make_bzimage())
    with pytest.raises(ConfigError, match="use --cpus 254 or fewer"):
        load_guest(memory, BootConfig(kernel=kernel), 255)


def test_is_linux_kernel(make_bzimage, make_pvh_vmlinux, make_multiboot_elf, make_aout_kludge):
    assert is_linux_kernel(make_bzimage())
    assert is_linux_kernel(make_pvh_vmlinux())
    assert not is_linux_kernel(make_multiboot_elf())
    assert not is_linux_kernel(make_aout_kludge())
    assert not is_linux_kernel(b"plain text")
