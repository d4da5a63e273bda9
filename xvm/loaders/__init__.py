"""Put a guest kernel into guest memory and say how the boot vCPU must start.

`load_guest` is the one entry point the machine builder calls. It reads the
kernel, recognises its format, and then, in order:

1. parses and places the kernel and the initrd (bzimage.py, pvh.py, multiboot.py, elf.py);
2. writes the firmware tables every kernel may look for: the MP table
   (arch/x86/mptable.py, for kernels without ACPI) and the ACPI tables
   (arch/x86/acpi.py, for kernels without MP-table parsing);
3. writes the boot parameters: the command line and the zero page for a bzImage
   (boot_params.py), hvm_start_info for PVH, or the multiboot information structure;
4. writes the boot GDT (and page tables for 64-bit entry) and returns the BSP
   registers. Application processors start from INIT/SIPI through the LAPIC.

Formats, tried in QEMU's order (hw/i386/x86.c x86_load_linux):
  * Linux bzImage, boot protocol 2.12+, entered at its 64-bit entry point;
  * Linux vmlinux with a PVH entry note (CONFIG_PVH), entered in 32-bit protected mode;
  * multiboot v1: ELF32 or a.out-kludge images, entered in 32-bit protected mode.

    guest = load_guest(memory, config.boot, config.cpus)
    vcpu.set_regs(guest.regs); vcpu.set_sregs(guest.sregs)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Union

from xvm.arch.x86 import layout
from xvm.arch.x86.acpi import write_acpi_tables
from xvm.arch.x86.boot_cpu import linux_64bit_state, protected_32bit_state, setup_long_mode, setup_protected_mode
from xvm.arch.x86.e820 import E820Entry, build_e820_map
from xvm.arch.x86.mptable import write_mptable
from xvm.arch.x86.regs import Regs, SpecialRegs
from xvm.config import BootConfig
from xvm.errors import LoaderError
from xvm.loaders.boot_params import build_zero_page
from xvm.loaders.bzimage import is_bzimage, load_bzimage, parse_bzimage, place_initrd
from xvm.loaders.elf import ElfImage, is_elf, parse_elf
from xvm.loaders.multiboot import (
    MULTIBOOT_BOOTLOADER_MAGIC,
    MultibootHeader,
    build_multiboot_info,
    find_multiboot_header,
    load_multiboot_kernel,
    place_modules,
)
from xvm.loaders.pvh import (
    LINUX_COMMAND_LINE_SIZE,
    LINUX_INITRD_ADDR_MAX,
    build_start_info,
    load_pvh_kernel,
    pvh_entry,
)
from xvm.memory.guest_memory import GuestMemory

__all__ = ["LoadedGuest", "is_linux_kernel", "load_guest"]

_FORMATS = (
    "xvm boots a Linux bzImage (boot protocol 2.12+, 64-bit), a vmlinux built with CONFIG_PVH, or a multiboot v1 "
    "kernel (ELF32 or a.out kludge); run `xvm images build` for the default guest"
)


@dataclass
class LoadedGuest:
    """What the loader did: the BSP start state and where kernel and initrd ended up."""

    kind: str  # "linux" (bzImage or PVH vmlinux) or "multiboot"
    regs: Regs
    sregs: SpecialRegs
    kernel_range: tuple[int, int]  # guest-physical [start, end) of the kernel, including what it reserves
    initrd_range: Optional[tuple[int, int]]
    description: str  # e.g. "Linux bzImage, boot protocol 2.15, 64-bit entry"


def load_guest(memory: GuestMemory, boot: BootConfig, cpus: int) -> LoadedGuest:
    """Load `boot.kernel` (and `boot.initrd`) for a machine with `cpus` CPUs; return the BSP state."""
    if boot.kernel is None:
        raise LoaderError("no kernel to boot: pass --kernel PATH, or run `xvm images build` for the default guest")
    kernel_path = Path(boot.kernel)
    if not kernel_path.is_file():
        raise LoaderError(
            f"kernel {kernel_path}: no such file (check --kernel, or run `xvm images build` for the default guest)"
        )
    initrd: Optional[bytes] = None
    if boot.initrd is not None:
        if not Path(boot.initrd).is_file():
            raise LoaderError(f"initrd {boot.initrd}: no such file (check --initrd, or omit it)")
        initrd = Path(boot.initrd).read_bytes()
    data = kernel_path.read_bytes()
    e820 = build_e820_map(memory)
    found = _identify(data, str(kernel_path))
    if isinstance(found, _Pvh):
        return _load_pvh(memory, data, found.elf, found.entry, boot, initrd, e820, cpus)
    if isinstance(found, MultibootHeader):
        return _load_multiboot(memory, data, found, boot, initrd, e820, cpus)
    return _load_bzimage(memory, data, boot, initrd, e820, cpus)


def is_linux_kernel(data: bytes) -> bool:
    """True for a bzImage or a PVH vmlinux: what takes a Linux command line (and Linux-only hints)."""
    try:
        return not isinstance(_identify(data, "kernel"), MultibootHeader)
    except LoaderError:
        return False


@dataclass(frozen=True)
class _Pvh:
    elf: ElfImage
    entry: int


def _identify(data: bytes, name: str) -> Union[None, _Pvh, MultibootHeader]:
    """None for a bzImage, _Pvh for a PVH vmlinux, the header for a multiboot kernel; else LoaderError.

    The order is QEMU's (hw/i386/x86.c x86_load_linux): "HdrS", then a PVH note, then multiboot.
    """
    if is_bzimage(data):
        return None
    elf, elf_error = None, None
    if is_elf(data):
        try:
            elf = parse_elf(data, name)
        except LoaderError as error:  # may still be an a.out-kludge multiboot image
            elf_error = error
    entry = None if elf is None else pvh_entry(elf, data, name)
    if entry is not None:
        return _Pvh(elf, entry)
    header = find_multiboot_header(data)
    if header is not None:
        return header
    if elf_error is not None:
        raise elf_error
    what = "an ELF file without a PVH entry or multiboot header" if elf else "not a kernel xvm knows"
    raise LoaderError(f"{name} is {what}: {_FORMATS}")


def _write_firmware_tables(memory: GuestMemory, cpus: int) -> int:
    """MP table and ACPI tables for `cpus` CPUs; returns the RSDP address."""
    write_mptable(memory, cpus)
    return write_acpi_tables(memory, cpus)


def _linux_cmdline(boot: BootConfig, name: str, kernel_limit: int) -> bytes:
    """The command line as bytes, checked against what the kernel and CMDLINE_MAX_SIZE allow."""
    cmdline = boot.cmdline.encode()
    limit = min(kernel_limit, layout.CMDLINE_MAX_SIZE - 1)
    if len(cmdline) > limit:
        raise LoaderError(
            f"the kernel command line is {len(cmdline)} bytes; {name} accepts at most {limit}: shorten --append"
        )
    return cmdline


class _LinuxBootData(NamedTuple):
    """Where `_place_linux_boot_data` put things, as both Linux entries pass them on."""

    initrd_range: Optional[tuple]  # (start, end) of the initrd, or None
    rsdp: int

    @property
    def initrd(self) -> Optional[tuple]:
        """(address, size) of the initrd, as the zero page and the PVH start_info take it."""
        if self.initrd_range is None:
            return None
        start, end = self.initrd_range
        return start, end - start


def _place_linux_boot_data(
    memory: GuestMemory,
    boot: BootConfig,
    cmdline: bytes,
    initrd: Optional[bytes],
    kernel_end: int,
    initrd_addr_max: int,
    cpus: int,
) -> _LinuxBootData:
    """The initrd above the kernel, the MP and ACPI tables and the command line: what every Linux entry needs."""
    initrd_range = None
    if initrd is not None:
        addr = place_initrd(memory, initrd, str(boot.initrd), kernel_end, initrd_addr_max)
        initrd_range = (addr, addr + len(initrd))
    rsdp = _write_firmware_tables(memory, cpus)
    memory.write(layout.CMDLINE_START, cmdline + b"\0")
    return _LinuxBootData(initrd_range, rsdp)


def _load_bzimage(
    memory: GuestMemory,
    data: bytes,
    boot: BootConfig,
    initrd: Optional[bytes],
    e820: list[E820Entry],
    cpus: int,
) -> LoadedGuest:
    name = str(boot.kernel)
    image = parse_bzimage(data, name)
    cmdline = _linux_cmdline(boot, name, image.cmdline_size)
    kernel = load_bzimage(memory, image)
    placed = _place_linux_boot_data(memory, boot, cmdline, initrd, kernel.end, image.initrd_addr_max, cpus)
    zero_page = build_zero_page(
        image.setup_header,
        cmdline_addr=layout.CMDLINE_START,
        e820=e820,
        initrd=placed.initrd,
        rsdp_addr=placed.rsdp,
    )
    memory.write(layout.ZERO_PAGE_START, zero_page)
    setup_long_mode(memory)
    regs, sregs = linux_64bit_state(kernel.entry, layout.ZERO_PAGE_START)
    return LoadedGuest(
        kind="linux",
        regs=regs,
        sregs=sregs,
        kernel_range=(kernel.load_addr, kernel.end),
        initrd_range=placed.initrd_range,
        description=f"Linux bzImage, boot protocol {image.version_text}, 64-bit entry",
    )


def _load_pvh(
    memory: GuestMemory,
    data: bytes,
    elf: ElfImage,
    entry: int,
    boot: BootConfig,
    initrd: Optional[bytes],
    e820: list[E820Entry],
    cpus: int,
) -> LoadedGuest:
    name = str(boot.kernel)
    cmdline = _linux_cmdline(boot, name, LINUX_COMMAND_LINE_SIZE - 1)
    kernel = load_pvh_kernel(memory, elf, data, entry, name)
    placed = _place_linux_boot_data(memory, boot, cmdline, initrd, kernel.end, LINUX_INITRD_ADDR_MAX, cpus)
    start_info = build_start_info(
        layout.PVH_INFO_START,
        cmdline_addr=layout.CMDLINE_START,
        initrd=placed.initrd,
        rsdp_addr=placed.rsdp,
        e820=e820,
    )
    memory.write(layout.PVH_INFO_START, start_info)
    setup_protected_mode(memory)
    regs, sregs = protected_32bit_state(kernel.entry, 0, layout.PVH_INFO_START)
    return LoadedGuest(
        kind="linux",
        regs=regs,
        sregs=sregs,
        kernel_range=(kernel.start, kernel.end),
        initrd_range=placed.initrd_range,
        description=f"Linux vmlinux, PVH entry at {kernel.entry:#x}",
    )


def _load_multiboot(
    memory: GuestMemory,
    data: bytes,
    header: MultibootHeader,
    boot: BootConfig,
    initrd: Optional[bytes],
    e820: list[E820Entry],
    cpus: int,
) -> LoadedGuest:
    name = str(boot.kernel)
    kernel = load_multiboot_kernel(memory, data, header, name)
    modules = place_modules(memory, [(str(boot.initrd), initrd)] if initrd is not None else [], kernel.end)
    _write_firmware_tables(memory, cpus)
    # QEMU's hw/i386/multiboot.c passes "<kernel path> <append>", like a GRUB "kernel" line.
    cmdline = " ".join(part for part in (name, boot.cmdline) if part)
    memory.write(layout.MULTIBOOT_INFO_START, build_multiboot_info(layout.MULTIBOOT_INFO_START, cmdline, modules, e820))
    setup_protected_mode(memory)
    regs, sregs = protected_32bit_state(kernel.entry, MULTIBOOT_BOOTLOADER_MAGIC, layout.MULTIBOOT_INFO_START)
    return LoadedGuest(
        kind="multiboot",
        regs=regs,
        sregs=sregs,
        kernel_range=(kernel.start, kernel.end),
        initrd_range=(modules[0].start, modules[0].end) if modules else None,
        description=f"multiboot {kernel.format} kernel, entry {kernel.entry:#x}",
    )
