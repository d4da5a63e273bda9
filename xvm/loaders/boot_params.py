"""struct boot_params, the Linux "zero page", as a boot loader fills it in.

The layout is Linux's ABI (arch/x86/include/uapi/asm/bootparam.h and
Documentation/arch/x86/zero-page.rst); the setup header inside it at 0x1F1 is
copied from the bzImage and then amended as Documentation/arch/x86/boot.rst
("Details of header fields", "The 64-bit boot protocol") tells a boot loader
to. The offsets of the setup header are the same in the bzImage file and in
the zero page, so bzimage.py reads the image with the constants defined here.

    page = build_zero_page(image.setup_header, cmdline_addr=..., e820=entries,
                           initrd=(addr, size), rsdp_addr=acpi_rsdp)
    memory.write(layout.ZERO_PAGE_START, page)
"""

from __future__ import annotations

import struct
from typing import Optional

from xvm.arch.x86.e820 import E820Entry, pack_e820_entries

ZERO_PAGE_SIZE = 0x1000

# --- struct boot_params fields outside the setup header -----------------------
BP_ACPI_RSDP_ADDR = 0x070  # u64, physical address of the ACPI RSDP (read since Linux 5.0)
BP_EXT_RAMDISK_IMAGE = 0x0C0  # u32, high 32 bits of ramdisk_image
BP_EXT_RAMDISK_SIZE = 0x0C4  # u32, high 32 bits of ramdisk_size
BP_EXT_CMD_LINE_PTR = 0x0C8  # u32, high 32 bits of cmd_line_ptr
BP_E820_ENTRIES = 0x1E8  # u8, number of entries in e820_table
BP_E820_TABLE = 0x2D0  # struct boot_e820_entry[E820_MAX_ENTRIES_ZEROPAGE]

# --- struct setup_header (at 0x1F1 in both the bzImage and the zero page) ------
HDR_START = 0x1F1
HDR_SETUP_SECTS = 0x1F1  # u8, size of the real-mode setup in 512-byte sectors (0 means 4)
HDR_VID_MODE = 0x1FA  # u16, video mode; 0xFFFF = "normal"
HDR_BOOT_FLAG = 0x1FE  # u16, 0xAA55
HDR_JUMP = 0x200  # u8 0xEB + u8 offset: the header ends at 0x202 + that offset
HDR_HEADER = 0x202  # "HdrS"
HDR_VERSION = 0x206  # u16, boot protocol version (major << 8 | minor)
HDR_TYPE_OF_LOADER = 0x210  # u8, 0xFF = boot loader without an assigned ID
HDR_LOADFLAGS = 0x211  # u8
HDR_RAMDISK_IMAGE = 0x218  # u32, initrd load address
HDR_RAMDISK_SIZE = 0x21C  # u32, initrd size
HDR_HEAP_END_PTR = 0x224  # u16, end of the setup heap, relative to the real-mode code + 0x200
HDR_CMD_LINE_PTR = 0x228  # u32, command line address
HDR_INITRD_ADDR_MAX = 0x22C  # u32, highest address the initrd may occupy (2.03+)
HDR_KERNEL_ALIGNMENT = 0x230  # u32, physical alignment a relocatable kernel needs (2.05+)
HDR_RELOCATABLE_KERNEL = 0x234  # u8, nonzero: may be loaded at any kernel_alignment multiple
HDR_XLOADFLAGS = 0x236  # u16 (2.12+)
HDR_CMDLINE_SIZE = 0x238  # u32, longest command line without the NUL (2.06+)
HDR_PREF_ADDRESS = 0x258  # u64, preferred (= non-relocatable) load address (2.10+)
HDR_INIT_SIZE = 0x260  # u32, bytes the kernel needs from its run address until it has set up (2.10+)
#: The setup header may not grow past here: edd_mbr_sig_buffer starts at 0x290.
HDR_END_MAX = 0x290

# loadflags bits.
LOADED_HIGH = 1 << 0  # protected-mode code is loaded at 0x100000
CAN_USE_HEAP = 1 << 7  # heap_end_ptr is valid
# xloadflags bits.
XLF_KERNEL_64 = 1 << 0  # has the 64-bit entry point at load address + 0x200

#: type_of_loader for a boot loader without an assigned ID (boot.rst "type_of_loader").
LOADER_TYPE_UNDEFINED = 0xFF
VID_MODE_NORMAL = 0xFFFF
#: heap_end_ptr: end of a full 64 KiB real-mode segment minus 0x200 (boot.rst; QEMU and Firecracker use it).
HEAP_END_PTR = 0xFE00


def build_zero_page(
    setup_header: bytes,
    cmdline_addr: int,
    e820: list[E820Entry],
    initrd: Optional[tuple[int, int]] = None,
    rsdp_addr: int = 0,
) -> bytes:
    """The 4 KiB zero page: the image's setup header plus what the boot loader must fill in.

    `initrd` is (address, size) when an initrd was placed.
    """
    page = bytearray(ZERO_PAGE_SIZE)
    page[HDR_START:HDR_START + len(setup_header)] = setup_header

    def put(fmt: str, offset: int, value: int) -> None:
        struct.pack_into(fmt, page, offset, value)

    put("<H", HDR_VID_MODE, VID_MODE_NORMAL)
    put("<B", HDR_TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED)
    put("<B", HDR_LOADFLAGS, page[HDR_LOADFLAGS] | CAN_USE_HEAP)
    put("<H", HDR_HEAP_END_PTR, HEAP_END_PTR)
    put("<I", HDR_CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    put("<I", BP_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if initrd is not None:
        addr, size = initrd
        put("<I", HDR_RAMDISK_IMAGE, addr & 0xFFFFFFFF)
        put("<I", HDR_RAMDISK_SIZE, size & 0xFFFFFFFF)
        put("<I", BP_EXT_RAMDISK_IMAGE, addr >> 32)
        put("<I", BP_EXT_RAMDISK_SIZE, size >> 32)
    table = pack_e820_entries(e820)
    page[BP_E820_TABLE:BP_E820_TABLE + len(table)] = table
    put("<B", BP_E820_ENTRIES, len(e820))
    put("<Q", BP_ACPI_RSDP_ADDR, rsdp_addr)
    return bytes(page)
