"""PVH direct boot of a vmlinux: the entry note, placement, hvm_start_info."""

from __future__ import annotations

import glob
import os
import struct
from pathlib import Path

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.e820 import build_e820_map
from xvm.arch.x86.regs import CR0_PE, CR0_PG
from xvm.config import BootConfig
from xvm.errors import LoaderError
from xvm.loaders import load_guest
from xvm.loaders.elf import parse_elf
from xvm.loaders.pvh import XEN_HVM_START_MAGIC_VALUE, build_start_info, load_pvh_kernel, pvh_entry


def test_entry_note_8_and_4_bytes(make_pvh_vmlinux, make_multiboot_elf):
    data = make_pvh_vmlinux(entry=0x1000600)
    assert pvh_entry(parse_elf(data, "v"), data, "v") == 0x1000600
    data32 = make_multiboot_elf(with_header=False, notes=((b"Xen", 18, struct.pack("<I", 0x100123)),))
    assert pvh_entry(parse_elf(data32, "v"), data32, "v") == 0x100123


def test_no_entry_note(make_multiboot_elf):
    data = make_multiboot_elf(notes=((b"Linux", 18, b"\0" * 8), (b"Xen", 5, b"\0" * 8)))
    assert pvh_entry(parse_elf(data, "v"), data, "v") is None


def test_odd_sized_entry_note_is_refused(make_multiboot_elf):
    data = make_multiboot_elf(notes=((b"Xen", 18, b"\0" * 6),))
    with pytest.raises(LoaderError, match="PVH entry note has 6 bytes"):
        pvh_entry(parse_elf(data, "v"), data, "v")


def test_segments_load_at_paddr(make_pvh_vmlinux, memory):
    memory.fill(0x1000000, 0x6000, 0xCC)
    data = make_pvh_vmlinux(size=0x3000, memsz=0x5000)
    elf = parse_elf(data, "v")
    kernel = load_pvh_kernel(memory, elf, data, 0x1000600, "v")
    assert (kernel.start, kernel.end, kernel.entry) == (0x1000000, 0x1005000, 0x1000600)
    assert memory.read(0x1000000, 0x3000) == b"\x90" * 0x3000
    assert memory.read(0x1003000, 0x2000) == bytes(0x2000)
    assert memory.read_u8(0x1005000) == 0xCC


def test_segments_below_1mib_are_refused(make_pvh_vmlinux, memory):
    data = make_pvh_vmlinux(paddr=0x80000)
    with pytest.raises(LoaderError, match="below 1 MiB"):
        load_pvh_kernel(memory, parse_elf(data, "v"), data, 0x80000, "v")


def test_kernel_too_big_names_the_memory_needed(make_pvh_vmlinux, memory):
    data = make_pvh_vmlinux(memsz=0x4000000)
    with pytest.raises(LoaderError, match=r"needs 80 MiB .* use --mem 80M or more"):
        load_pvh_kernel(memory, parse_elf(data, "v"), data, 0x1000600, "v")


def test_start_info_layout(memory):
    e820 = build_e820_map(memory)
    base = layout.PVH_INFO_START
    blob = build_start_info(base, 0x20000, (0x3000000, 0x1234), 0xE0000, e820)
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, reserved = struct.unpack_from(
        "<IIIIQQQQII", blob
    )
    assert (magic, version, flags, nr_modules) == (XEN_HVM_START_MAGIC_VALUE, 1, 0, 1)
    assert (cmdline, rsdp, entries, reserved) == (0x20000, 0xE0000, len(e820), 0)
    assert struct.unpack_from("<QQQQ", blob, modlist - base) == (0x3000000, 0x1234, 0, 0)
    for i, entry in enumerate(e820):
        assert struct.unpack_from("<QQII", blob, memmap - base + 24 * i) == (entry.addr, entry.size, entry.type, 0)
    no_initrd = build_start_info(base, 0x20000, None, 0, e820)
    assert struct.unpack_from("<IQ", no_initrd, 12) == (0, 0)


def test_load_guest_boots_a_vmlinux_through_pvh(tmp_path, memory, make_pvh_vmlinux):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(make_pvh_vmlinux())
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x42" * 5000)
    guest = load_guest(memory, BootConfig(kernel=kernel, initrd=initrd, cmdline="console=ttyS0"), 2)
    assert guest.kind == "linux"
    assert guest.description == "Linux vmlinux, PVH entry at 0x1000600"
    assert guest.kernel_range == (0x1000000, 0x1005000)
    start, end = guest.initrd_range
    assert start % layout.PAGE_SIZE == 0 and end == start + 5000 and start >= 0x1005000
    assert (guest.regs.rip, guest.regs.rbx) == (0x1000600, layout.PVH_INFO_START)
    assert guest.sregs.cr0 & CR0_PE and not guest.sregs.cr0 & CR0_PG and guest.sregs.cs.db == 1
    info = layout.PVH_INFO_START
    assert memory.read_u32(info) == XEN_HVM_START_MAGIC_VALUE
    cmdline = memory.read_u64(info + 24)
    assert memory.read(cmdline, 14) == b"console=ttyS0\0"
    modlist = memory.read_u64(info + 16)
    assert (memory.read_u64(modlist), memory.read_u64(modlist + 8)) == (start, 5000)
    assert memory.read_u64(info + 32) == layout.ACPI_RSDP_START
    assert memory.read(layout.MPTABLE_START, 4) == b"_MP_"


def test_pvh_command_line_limit(tmp_path, memory, make_pvh_vmlinux):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(make_pvh_vmlinux())
    with pytest.raises(LoaderError, match="2048 bytes; .* accepts at most 2047: shorten --append"):
        load_guest(memory, BootConfig(kernel=kernel, cmdline="x" * 2048), 1)


def test_a_real_vmlinux_has_a_pvh_entry_when_one_is_around(capsys):
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    patterns = [f"{cache}/xvm/kernels/*/vmlinux", f"{cache}/xvm/work/*/vmlinux"]
    candidates = sorted(path for pattern in patterns for path in glob.glob(pattern))
    if not candidates:
        with capsys.disabled():
            print("\nno vmlinux in ~/.cache/xvm (run `xvm images build`): skipping")
        pytest.skip("no vmlinux built here (run `xvm images build`)")
    data = Path(candidates[0]).read_bytes()
    elf = parse_elf(data, candidates[0])
    entry = pvh_entry(elf, data, candidates[0])
    assert entry is not None, f"{candidates[0]} was built without CONFIG_PVH"
    assert any(seg.paddr <= entry < seg.paddr + seg.memsz for seg in elf.load_segments())
