"""Linux bzImage: parse the setup header, place the protected-mode kernel and the initrd.

A bzImage (Documentation/arch/x86/boot.rst) is a real-mode setup part of
(setup_sects + 1) sectors followed by the compressed protected-mode kernel.
xvm skips the real-mode part and enters the 64-bit entry point directly
("64-bit Boot Protocol", protocol 2.12+ with XLF_KERNEL_64): the protected-
mode part is copied to 0x100000 and entered at +0x200 in long mode.

How much RAM the kernel needs is decided by the decompressor, not by the file
size: arch/x86/boot/compressed/head_64.S runs the kernel at
max(load address rounded up to kernel_alignment, LOAD_PHYSICAL_ADDR) - and
LOAD_PHYSICAL_ADDR is what the header calls pref_address - and uses init_size
bytes from there. That range must be RAM and the initrd must stay clear of it.

This module only parses and places (rust-vmm linux-loader's KernelLoader);
boot_params.py writes the zero page.

    image = parse_bzimage(data, "bzImage")
    kernel = load_bzimage(memory, image)             # -> BzImagePlacement
    initrd = place_initrd(memory, initrd_bytes, "initrd", kernel.end, image.initrd_addr_max)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xvm.arch.x86 import layout
from xvm.arch.x86.e820 import low_ram_end, require_low_ram
from xvm.errors import LoaderError
from xvm.loaders.boot_params import (
    HDR_CMDLINE_SIZE,
    HDR_END_MAX,
    HDR_HEADER,
    HDR_INIT_SIZE,
    HDR_INITRD_ADDR_MAX,
    HDR_JUMP,
    HDR_KERNEL_ALIGNMENT,
    HDR_LOADFLAGS,
    HDR_PREF_ADDRESS,
    HDR_RELOCATABLE_KERNEL,
    HDR_SETUP_SECTS,
    HDR_START,
    HDR_VERSION,
    HDR_XLOADFLAGS,
    LOADED_HIGH,
    XLF_KERNEL_64,
)
from xvm.memory.guest_memory import GuestMemory

HDRS_MAGIC = b"HdrS"
#: Oldest boot protocol xvm accepts: 2.06 added cmdline_size.
MIN_BOOT_PROTOCOL = 0x0206
#: The 64-bit entry point (XLF_KERNEL_64) exists from protocol 2.12.
BOOT_PROTOCOL_64BIT = 0x020C
SECTOR_SIZE = 512
#: setup_sects == 0 means 4 (boot.rst, "setup_sects").
DEFAULT_SETUP_SECTS = 4
#: The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
STARTUP_64_OFFSET = 0x200
#: Everything a boot loader reads lies below the end of the 2.10+ header (init_size).
_MIN_FILE_SIZE = HDR_INIT_SIZE + 4

_BUILD_HINT = "use arch/x86/boot/bzImage from the kernel build, or run `xvm images build` for the default guest"


def is_bzimage(data: bytes) -> bool:
    """True when `data` carries the "HdrS" setup-header signature."""
    return data[HDR_HEADER:HDR_HEADER + 4] == HDRS_MAGIC


def _u(data: bytes, fmt: str, offset: int) -> int:
    return struct.unpack_from(fmt, data, offset)[0]


@dataclass(frozen=True)
class BzImage:
    """The fields of a bzImage's setup header a loader acts on."""

    name: str
    version: int
    setup_size: int  # bytes of real-mode code before the protected-mode kernel
    setup_header: bytes  # bytes 0x1F1.. of the header, copied into the zero page
    kernel: bytes  # the protected-mode part
    kernel_alignment: int
    relocatable: bool
    pref_address: int
    init_size: int
    cmdline_size: int
    initrd_addr_max: int

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


def parse_bzimage(data: bytes, name: str) -> BzImage:
    """Check and parse a bzImage (`name` is the path, for messages)."""
    if len(data) < _MIN_FILE_SIZE or not is_bzimage(data):
        raise LoaderError(f"{name} is not a bzImage (no HdrS setup header): {_BUILD_HINT}")
    version = _u(data, "<H", HDR_VERSION)
    text = f"{version >> 8}.{version & 0xFF:02d}"
    if version < MIN_BOOT_PROTOCOL:
        raise LoaderError(
            f"{name} uses Linux boot protocol {text}; xvm needs 2.06 or newer: boot a kernel from 2.6.22 or later"
        )
    if version < BOOT_PROTOCOL_64BIT or not _u(data, "<H", HDR_XLOADFLAGS) & XLF_KERNEL_64:
        raise LoaderError(
            f"{name} (boot protocol {text}) has no 64-bit entry point (XLF_KERNEL_64); "
            "xvm boots 64-bit kernels: build with CONFIG_X86_64=y (Linux 3.8 or later)"
        )
    if not data[HDR_LOADFLAGS] & LOADED_HIGH:
        raise LoaderError(f"{name} is a zImage loaded below 1 MiB, not a bzImage: {_BUILD_HINT}")
    setup_sects = data[HDR_SETUP_SECTS] or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR_SIZE
    if setup_size >= len(data):
        raise LoaderError(f"{name}: setup_sects {setup_sects} points past the end of the file; the file is truncated")
    # The header ends at 0x202 + the jump offset at 0x201 (boot.rst, "protocol 2.0+").
    header_end = min(HDR_HEADER + data[HDR_JUMP + 1], HDR_END_MAX)
    kernel_alignment = _u(data, "<I", HDR_KERNEL_ALIGNMENT)
    if kernel_alignment & (kernel_alignment - 1):
        raise LoaderError(f"{name}: kernel_alignment {kernel_alignment:#x} is not a power of two; the file is damaged")
    return BzImage(
        name=name,
        version=version,
        setup_size=setup_size,
        setup_header=bytes(data[HDR_START:header_end]),
        kernel=bytes(data[setup_size:]),
        kernel_alignment=kernel_alignment or 1,
        relocatable=bool(data[HDR_RELOCATABLE_KERNEL]),
        pref_address=_u(data, "<Q", HDR_PREF_ADDRESS),
        init_size=_u(data, "<I", HDR_INIT_SIZE),
        cmdline_size=_u(data, "<I", HDR_CMDLINE_SIZE),
        initrd_addr_max=_u(data, "<I", HDR_INITRD_ADDR_MAX),
    )


@dataclass(frozen=True)
class BzImagePlacement:
    """Where the kernel went: copied to `load_addr`, entered at `entry`, owns RAM up to `end`."""

    load_addr: int
    entry: int
    end: int


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def load_bzimage(memory: GuestMemory, image: BzImage) -> BzImagePlacement:
    """Copy the protected-mode kernel to HIGH_MEMORY_START after checking it fits in RAM."""
    load_addr = layout.HIGH_MEMORY_START
    # head_64.S: a relocatable kernel runs at its load address rounded up to kernel_alignment, but
    # never below LOAD_PHYSICAL_ADDR (= pref_address); a non-relocatable one at pref_address.
    run_addr = image.pref_address
    if image.relocatable:
        run_addr = max(_align_up(load_addr, image.kernel_alignment), image.pref_address)
    end = max(load_addr + len(image.kernel), run_addr + image.init_size)
    require_low_ram(memory, end, f"kernel {image.name}")
    memory.write(load_addr, image.kernel)
    return BzImagePlacement(load_addr=load_addr, entry=load_addr + STARTUP_64_OFFSET, end=end)


def place_initrd(memory: GuestMemory, initrd: bytes, name: str, kernel_end: int, initrd_addr_max: int) -> int:
    """Copy `initrd` page-aligned as high as the kernel allows below the top of low RAM; return its address.

    Linux wants the initrd below initrd_addr_max (boot.rst: "the initrd should typically be located
    as high in memory as possible"), and it must not overlap the range the kernel decompresses into.
    """
    top = min(low_ram_end(memory), initrd_addr_max + 1)
    addr = (top - len(initrd)) & ~(layout.PAGE_SIZE - 1)
    if addr < _align_up(kernel_end, layout.PAGE_SIZE):
        end = _align_up(kernel_end, layout.PAGE_SIZE) + len(initrd)
        if end > initrd_addr_max + 1:
            raise LoaderError(
                f"initrd {name} ({len(initrd) >> 20} MiB) does not fit below this kernel's initrd_addr_max "
                f"{initrd_addr_max:#x}: use a smaller initrd"
            )
        require_low_ram(memory, end, f"the kernel with initrd {name}")
    memory.write(addr, initrd)
    return addr
