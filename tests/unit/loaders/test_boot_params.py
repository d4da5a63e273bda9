"""The zero page at the offsets Documentation/arch/x86/zero-page.rst gives."""

from __future__ import annotations

import struct

from xvm.arch.x86.e820 import E820_RAM, E820_RESERVED, E820Entry
from xvm.loaders.boot_params import ZERO_PAGE_SIZE, build_zero_page
from xvm.loaders.bzimage import parse_bzimage

E820 = [E820Entry(0, 0x9FC00, E820_RAM), E820Entry(0x9FC00, 0x60400, E820_RESERVED), E820Entry(0x100000, 0x3F00000, 1)]


def _u(page: bytes, fmt: str, offset: int) -> int:
    return struct.unpack_from(fmt, page, offset)[0]


def test_zero_page_fields(make_bzimage):
    image = parse_bzimage(make_bzimage(cmdline_size=2047), "bz")
    page = build_zero_page(image.setup_header, 0x20000, E820, initrd=(0x3F00000, 0x12345), rsdp_addr=0xE0000)
    assert len(page) == ZERO_PAGE_SIZE
    assert page[0x202:0x206] == b"HdrS"
    assert _u(page, "<H", 0x1FE) == 0xAA55
    assert _u(page, "<H", 0x206) == 0x020F
    assert _u(page, "<I", 0x238) == 2047  # cmdline_size copied from the image
    assert _u(page, "<H", 0x1FA) == 0xFFFF  # vid_mode normal
    assert page[0x210] == 0xFF  # type_of_loader
    assert page[0x211] & 0x80 and page[0x211] & 0x01  # CAN_USE_HEAP added, LOADED_HIGH kept
    assert _u(page, "<H", 0x224) == 0xFE00  # heap_end_ptr
    assert _u(page, "<I", 0x228) == 0x20000  # cmd_line_ptr
    assert _u(page, "<I", 0x218) == 0x3F00000  # ramdisk_image
    assert _u(page, "<I", 0x21C) == 0x12345  # ramdisk_size
    assert _u(page, "<I", 0x0C0) == 0 and _u(page, "<I", 0x0C4) == 0
    assert _u(page, "<Q", 0x070) == 0xE0000  # acpi_rsdp_addr
    assert page[0x1E8] == 3  # e820_entries
    for i, entry in enumerate(E820):
        assert struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) == (entry.addr, entry.size, entry.type)
    assert page[0x2D0 + 60:0x2D0 + 80] == bytes(20)


def test_addresses_above_4g_use_the_ext_fields(make_bzimage):
    image = parse_bzimage(make_bzimage(), "bz")
    page = build_zero_page(image.setup_header, 0x1_0002_0000, E820, initrd=(0x1_2000_0000, 0x1_0000_0010))
    assert _u(page, "<I", 0x228) == 0x20000 and _u(page, "<I", 0x0C8) == 1
    assert _u(page, "<I", 0x218) == 0x2000_0000 and _u(page, "<I", 0x0C0) == 1
    assert _u(page, "<I", 0x21C) == 0x10 and _u(page, "<I", 0x0C4) == 1


def test_no_initrd_leaves_ramdisk_fields_zero(make_bzimage):
    image = parse_bzimage(make_bzimage(), "bz")
    page = build_zero_page(image.setup_header, 0x20000, E820)
    assert _u(page, "<I", 0x218) == 0 and _u(page, "<I", 0x21C) == 0
