"""Minimal ACPI tables: enough for a kernel with CONFIG_ACPI to find its CPUs and IOAPIC.

Kernels built without MP-table parsing (Debian's cloud kernel has no
X86_MPPARSE) learn about secondary CPUs and the IOAPIC only from the MADT.
Linux finds the RSDP by scanning 0xE0000-0xFFFFF on 16-byte boundaries
(drivers/acpi/acpica/tbxfroot.c, acpi_find_root_pointer), or takes it from
boot_params.acpi_rsdp_addr. xvm writes (ACPI 6.5, chapter 5.2):

    RSDP  at ACPI_RSDP_START       -> RSDT (32-bit) and XSDT (64-bit)
    XSDT/RSDT                      -> FADT, MADT
    FADT  hardware-reduced          -> DSDT (header only: no AML devices)
    MADT  one Processor Local APIC per CPU, the IOAPIC, the ISA IRQ 0 override, LINT1 NMI

The FADT declares a hardware-reduced platform (no PM1/GPE blocks, no SCI), as
Firecracker (src/vmm/src/acpi/) and Cloud Hypervisor do, so Linux does not go
looking for fixed ACPI hardware xvm does not emulate; its reset register is
the i8042 pulse (0xFE to port 0x64) that xvm's i8042 turns into a VM reset.
All tables lie in the range the e820 map reserves.

    rsdp = write_acpi_tables(memory, cpus=2)
"""

from __future__ import annotations

import struct

from xvm.arch.x86 import layout
from xvm.arch.x86.mptable import checksum8
from xvm.errors import ConfigError
from xvm.memory.guest_memory import GuestMemory

ACPI_OEM_ID = b"XVM   "
ACPI_OEM_TABLE_ID = b"XVMPC   "
ACPI_OEM_REVISION = 1
ACPI_CREATOR_ID = b"XVM "
ACPI_CREATOR_REVISION = 1

#: struct acpi_table_header (ACPI 5.2.6): signature, length, revision, checksum, OEM ids, creator.
_SDT_HEADER = struct.Struct("<4sIBB6s8sI4sI")
_SDT_CHECKSUM_OFFSET = 9
#: RSDP (ACPI 5.2.5.3): 20-byte ACPI 1.0 part + length, XSDT address, extended checksum.
_RSDP = struct.Struct("<8sB6sBIIQB3x")
RSDP_REVISION_2 = 2

# FADT (ACPI 6.5 table 5.9): revision 6, 276 bytes; field offsets.
FADT_REVISION = 6
FADT_MINOR_REVISION = 5
FADT_SIZE = 276
FADT_DSDT = 40
FADT_IAPC_BOOT_ARCH = 109
FADT_FLAGS = 112
FADT_RESET_REG = 116
FADT_RESET_VALUE = 128
FADT_MINOR_VERSION = 131
FADT_X_DSDT = 140
FADT_HYPERVISOR_VENDOR = 268
# FADT flags (table 5.10).
FADT_F_WBINVD = 1 << 0
FADT_F_PWR_BUTTON = 1 << 4  # no fixed-feature power button
FADT_F_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
FADT_F_RESET_REG_SUP = 1 << 10
FADT_F_HW_REDUCED_ACPI = 1 << 20
# IA-PC boot architecture flags (table 5.11).
IAPC_BOOT_ARCH_8042 = 1 << 1
IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
#: Generic Address Structure (5.2.3.2): space id, bit width, bit offset, access size, address.
_GAS = struct.Struct("<BBBBQ")
ACPI_ADR_SPACE_SYSTEM_IO = 1
ACPI_ACCESS_BYTE = 1
#: Value written to the reset register: the i8042 "pulse output line 0" command (CPU reset).
I8042_CMD_RESET = 0xFE

# MADT (5.2.12): header + local APIC address + flags, then interrupt controller structures.
MADT_REVISION = 5
ACPI_MADT_PCAT_COMPAT = 1  # dual 8259s are present too
ACPI_MADT_TYPE_LOCAL_APIC = 0
ACPI_MADT_TYPE_IO_APIC = 1
ACPI_MADT_TYPE_INTERRUPT_OVERRIDE = 2
ACPI_MADT_TYPE_LOCAL_APIC_NMI = 4
ACPI_MADT_ENABLED = 1
#: MPS INTI flags 0: polarity and trigger conform to the bus (ISA: active high, edge).
ACPI_MADT_INTI_CONFORMS = 0
#: Processor UID 0xFF in a Local APIC NMI structure: every processor.
ACPI_MADT_ALL_PROCESSORS = 0xFF
_MADT_LOCAL_APIC = struct.Struct("<BBBBI")
_MADT_IO_APIC = struct.Struct("<BBBBII")
_MADT_INTERRUPT_OVERRIDE = struct.Struct("<BBBBIH")
_MADT_LOCAL_APIC_NMI = struct.Struct("<BBBHB")

DSDT_REVISION = 2
SDT_REVISION = 1

#: Tables are placed 16-byte aligned.
_TABLE_ALIGN = 16


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: header (with length and checksum) + body."""
    header = _SDT_HEADER.pack(
        signature,
        _SDT_HEADER.size + len(body),
        revision,
        0,
        ACPI_OEM_ID,
        ACPI_OEM_TABLE_ID,
        ACPI_OEM_REVISION,
        ACPI_CREATOR_ID,
        ACPI_CREATOR_REVISION,
    )
    table = bytearray(header + body)
    table[_SDT_CHECKSUM_OFFSET] = checksum8(table)
    return bytes(table)


def build_dsdt() -> bytes:
    """A DSDT with no AML: the FADT must point at one, Linux needs nothing in it."""
    return _sdt(b"DSDT", DSDT_REVISION, b"")


def build_fadt(dsdt_addr: int) -> bytes:
    """A hardware-reduced FADT pointing at the DSDT, with the i8042 reset register."""
    body = bytearray(FADT_SIZE - _SDT_HEADER.size)

    def put(fmt: str, offset: int, *values: int) -> None:
        struct.pack_into(fmt, body, offset - _SDT_HEADER.size, *values)

    put("<I", FADT_DSDT, dsdt_addr)
    put("<H", FADT_IAPC_BOOT_ARCH, IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT)
    put(
        "<I",
        FADT_FLAGS,
        FADT_F_WBINVD | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON | FADT_F_RESET_REG_SUP | FADT_F_HW_REDUCED_ACPI,
    )
    put(_GAS.format, FADT_RESET_REG, ACPI_ADR_SPACE_SYSTEM_IO, 8, 0, ACPI_ACCESS_BYTE, layout.PORT_I8042_CMD)
    put("<B", FADT_RESET_VALUE, I8042_CMD_RESET)
    put("<B", FADT_MINOR_VERSION, FADT_MINOR_REVISION)
    put("<Q", FADT_X_DSDT, dsdt_addr)
    put("<8s", FADT_HYPERVISOR_VENDOR, b"XVMXVMXV")
    return _sdt(b"FACP", FADT_REVISION, bytes(body))


def build_madt(cpus: int) -> bytes:
    """MADT: local APIC IDs 0..cpus-1, the IOAPIC (ID cpus, GSI base 0), IRQ 0 override, NMI on LINT1."""
    parts = [struct.pack("<II", layout.LAPIC_START, ACPI_MADT_PCAT_COMPAT)]
    for cpu in range(cpus):
        parts.append(_MADT_LOCAL_APIC.pack(ACPI_MADT_TYPE_LOCAL_APIC, 8, cpu, cpu, ACPI_MADT_ENABLED))
    parts.append(_MADT_IO_APIC.pack(ACPI_MADT_TYPE_IO_APIC, 12, cpus, 0, layout.IOAPIC_START, 0))
    # ISA IRQ 0 reaches the IOAPIC pin layout names (ACPI 5.2.12.5); the other ISA IRQs map 1:1.
    parts.append(
        _MADT_INTERRUPT_OVERRIDE.pack(
            ACPI_MADT_TYPE_INTERRUPT_OVERRIDE, 10, 0, layout.IRQ_PIT, layout.PIT_IOAPIC_PIN, ACPI_MADT_INTI_CONFORMS
        )
    )
    parts.append(
        _MADT_LOCAL_APIC_NMI.pack(
            ACPI_MADT_TYPE_LOCAL_APIC_NMI, 6, ACPI_MADT_ALL_PROCESSORS, ACPI_MADT_INTI_CONFORMS, 1  # LINT1
        )
    )
    return _sdt(b"APIC", MADT_REVISION, b"".join(parts))


def build_rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    """ACPI 2.0+ RSDP with both checksums (first 20 bytes, then all 36)."""
    rsdp = bytearray(_RSDP.pack(b"RSD PTR ", 0, ACPI_OEM_ID, RSDP_REVISION_2, rsdt_addr, _RSDP.size, xsdt_addr, 0))
    rsdp[8] = checksum8(rsdp[:20])
    rsdp[32] = checksum8(rsdp)
    return bytes(rsdp)


def build_acpi_tables(cpus: int) -> list[tuple[int, bytes]]:
    """Every table with its guest-physical address: RSDP first, then XSDT, RSDT, FADT, DSDT, MADT."""
    placed: list[tuple[int, bytes]] = []
    cursor = layout.ACPI_TABLES_START

    def place(size: int) -> int:
        nonlocal cursor
        addr = cursor
        cursor = (cursor + size + _TABLE_ALIGN - 1) & ~(_TABLE_ALIGN - 1)
        return addr

    # Sizes are known up front, so addresses can be assigned before the tables that point at them.
    pointers = 2
    xsdt_addr = place(_SDT_HEADER.size + 8 * pointers)
    rsdt_addr = place(_SDT_HEADER.size + 4 * pointers)
    dsdt = build_dsdt()
    fadt_addr = place(FADT_SIZE)
    dsdt_addr = place(len(dsdt))
    madt = build_madt(cpus)
    madt_addr = place(len(madt))
    if cursor > layout.BIOS_ROM_START:
        raise ConfigError(f"--cpus {cpus}: the ACPI tables would not fit below {layout.BIOS_ROM_START:#x}; use fewer")

    placed.append((layout.ACPI_RSDP_START, build_rsdp(rsdt_addr, xsdt_addr)))
    placed.append((xsdt_addr, _sdt(b"XSDT", SDT_REVISION, struct.pack("<2Q", fadt_addr, madt_addr))))
    placed.append((rsdt_addr, _sdt(b"RSDT", SDT_REVISION, struct.pack("<2I", fadt_addr, madt_addr))))
    placed.append((fadt_addr, build_fadt(dsdt_addr)))
    placed.append((dsdt_addr, dsdt))
    placed.append((madt_addr, madt))
    return placed


def write_acpi_tables(memory: GuestMemory, cpus: int) -> int:
    """Write the ACPI tables for `cpus` CPUs; return the RSDP address (for boot_params.acpi_rsdp_addr)."""
    for addr, blob in build_acpi_tables(cpus):
        memory.write(addr, blob)
    return layout.ACPI_RSDP_START
