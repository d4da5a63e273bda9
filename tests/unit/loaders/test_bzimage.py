"""bzImage parsing and placement against Documentation/arch/x86/boot.rst."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from xvm.arch.x86 import layout
from xvm.errors import LoaderError
from xvm.loaders.bzimage import load_bzimage, parse_bzimage, place_initrd
from xvm.memory.guest_memory import GuestMemory

MiB = 1 << 20


def test_parse_reads_the_setup_header(make_bzimage):
    data = make_bzimage(setup_sects=6, init_size=0x123000, cmdline_size=4095)
    image = parse_bzimage(data, "bz")
    assert image.version_text == "2.15"
    assert image.setup_size == 7 * 512
    assert image.kernel == data[7 * 512:]
    assert image.init_size == 0x123000
    assert image.cmdline_size == 4095
    assert image.pref_address == 0x1000000
    # The header runs from 0x1F1 to 0x202 + the jump offset at 0x201.
    assert image.setup_header == data[0x1F1:0x26C]


def test_setup_sects_zero_means_four(make_bzimage):
    image = parse_bzimage(make_bzimage(setup_sects=0), "bz")
    assert image.setup_size == 5 * 512


def test_load_places_kernel_at_1mib_and_enters_at_0x200(make_bzimage, memory):
    payload = bytes(range(256)) * 16
    image = parse_bzimage(make_bzimage(payload=payload), "bz")
    placed = load_bzimage(memory, image)
    assert placed.load_addr == 0x100000
    assert placed.entry == 0x100200
    assert memory.read(0x100000, len(payload)) == payload
    # Relocatable: runs at max(align_up(1 MiB, 2 MiB), pref_address) and needs init_size from there.
    assert placed.end == 0x1000000 + 0x400000


def test_relocatable_kernel_above_pref_address_runs_at_aligned_load_address(make_bzimage, memory):
    image = parse_bzimage(make_bzimage(pref_address=0x100000, kernel_alignment=0x400000, init_size=MiB), "bz")
    assert load_bzimage(memory, image).end == 0x400000 + MiB


def test_non_relocatable_kernel_runs_at_pref_address(make_bzimage, memory):
    image = parse_bzimage(make_bzimage(relocatable=0, pref_address=0x2000000, init_size=MiB), "bz")
    assert load_bzimage(memory, image).end == 0x2000000 + MiB


def test_kernel_that_does_not_fit_names_the_memory_needed(make_bzimage):
    small = GuestMemory.allocate(16 * MiB)
    try:
        image = parse_bzimage(make_bzimage(init_size=0x1400000), "bz")
        with pytest.raises(LoaderError, match=r"needs 36 MiB .* --mem is 16M: use --mem 36M or more"):
            load_bzimage(small, image)
    finally:
        small.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"version": 0x0205}, r"boot protocol 2\.05; xvm needs 2\.06 or newer"),
        ({"version": 0x020B}, r"protocol 2\.11\) has no 64-bit entry point"),
        ({"xloadflags": 0}, r"has no 64-bit entry point .*CONFIG_X86_64"),
        ({"loadflags": 0}, r"zImage"),
        ({"kernel_alignment": 0x300000}, r"kernel_alignment 0x300000 is not a power of two"),
    ],
)
def test_bad_headers_are_refused_with_the_reason(make_bzimage, kwargs, message):
    with pytest.raises(LoaderError, match=message):
        parse_bzimage(make_bzimage(**kwargs), "bz")


def test_missing_hdrs_magic_is_not_a_bzimage(make_bzimage):
    data = bytearray(make_bzimage())
    data[0x202:0x206] = b"Nope"
    with pytest.raises(LoaderError, match="not a bzImage .*xvm images build"):
        parse_bzimage(bytes(data), "bz")


def test_truncated_setup_is_refused(make_bzimage):
    data = make_bzimage(setup_sects=4, payload=b"")
    with pytest.raises(LoaderError, match="truncated"):
        parse_bzimage(data[: 4 * 512], "bz")


def test_initrd_goes_page_aligned_to_the_top_of_low_ram(make_bzimage, memory):
    image = parse_bzimage(make_bzimage(), "bz")
    placed = load_bzimage(memory, image)
    initrd = b"\xab" * 5000
    addr = place_initrd(memory, initrd, "initrd", placed.end, image.initrd_addr_max)
    assert addr % layout.PAGE_SIZE == 0
    assert addr >= placed.end
    assert addr + len(initrd) <= 64 * MiB
    assert 64 * MiB - (addr + len(initrd)) < layout.PAGE_SIZE
    assert memory.read(addr, len(initrd)) == initrd


def test_initrd_stays_below_initrd_addr_max(make_bzimage, memory):
    image = parse_bzimage(make_bzimage(initrd_addr_max=0x1FFFFFF), "bz")
    placed = load_bzimage(memory, image)
    addr = place_initrd(memory, b"x" * 0x3000, "initrd", placed.end, image.initrd_addr_max)
    assert addr + 0x3000 <= 0x2000000


def test_initrd_that_does_not_fit_names_the_memory_needed(make_bzimage, memory):
    image = parse_bzimage(make_bzimage(), "bz")
    placed = load_bzimage(memory, image)  # the kernel needs up to 20 MiB
    with pytest.raises(LoaderError, match=r"the kernel with initrd big needs 71 MiB .* use --mem 71M or more"):
        place_initrd(memory, bytes(50 * MiB + 1), "big", placed.end, image.initrd_addr_max)


def test_initrd_beyond_initrd_addr_max_says_so(make_bzimage, memory):
    image = parse_bzimage(make_bzimage(initrd_addr_max=0x17FFFFF), "bz")
    placed = load_bzimage(memory, image)
    with pytest.raises(LoaderError, match="initrd_addr_max 0x17fffff"):
        place_initrd(memory, bytes(8 * MiB), "big", placed.end, image.initrd_addr_max)


def _real_bzimages() -> list[str]:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    patterns = [
        "/boot/vmlinuz-*",
        f"{cache}/xvm/*/bzImage",
        f"{cache}/xvm/*/*/bzImage",
        f"{cache}/xvm/work/*/arch/x86/boot/bzImage",
    ]
    return sorted({path for pattern in patterns for path in glob.glob(pattern) if os.access(path, os.R_OK)})


def test_a_real_bzimage_parses_when_one_is_around(capsys):
    candidates = _real_bzimages()
    if not candidates:
        with capsys.disabled():
            print("\nno bzImage in /boot or ~/.cache/xvm (run `xvm images build`): skipping")
        pytest.skip("no real bzImage on this machine (run `xvm images build`)")
    image = parse_bzimage(Path(candidates[0]).read_bytes(), candidates[0])
    assert image.version >= 0x020C
    assert image.init_size > len(image.kernel)
    assert image.kernel_alignment >= layout.PAGE_SIZE
    assert image.cmdline_size >= 255
