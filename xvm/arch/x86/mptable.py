"""Intel MultiProcessor Specification 1.4 tables: how a kernel without ACPI finds its CPUs.

Linux with CONFIG_X86_MPPARSE scans the last KiB of base memory (639-640 KiB)
for the 16-byte floating pointer "_MP_" (arch/x86/kernel/mpparse.c,
smp_scan_config), which points at the configuration table "PCMP": one
processor entry per CPU, the ISA bus, the IOAPIC, how each ISA IRQ reaches an
IOAPIC pin, and how LINT0/LINT1 of every local APIC are wired (ExtINT from the
8259, NMI). xvm writes both at MPTABLE_START = 0x9FC00, inside the range the
e820 map reserves. Models: Firecracker arch/x86_64/mptable.rs, kvmtool
x86/mptable.c.

    write_mptable(memory, cpus=4)
"""

from __future__ import annotations

import struct

from xvm.arch.x86 import layout
from xvm.errors import ConfigError
from xvm.memory.guest_memory import GuestMemory

# Entry types (MP spec 4.3, table 4-3).
MP_PROCESSOR = 0
MP_BUS = 1
MP_IOAPIC = 2
MP_INTSRC = 3
MP_LINTSRC = 4

# Processor entry cpuflag bits.
CPU_ENABLED = 1
CPU_BOOTPROCESSOR = 2
#: cpufeature: family 6, model 0, stepping 0 (what Firecracker and kvmtool report).
CPU_SIGNATURE = 0x600
#: featureflag: CPUID.1:EDX bits the entry repeats: FPU (bit 0) and on-chip APIC (bit 9).
CPU_FEATURE_FPU = 1 << 0
CPU_FEATURE_APIC = 1 << 9

#: Local APIC version: integrated xAPIC (KVM's lapic.c APIC_VERSION).
APIC_VERSION = 0x14
#: IOAPIC version (KVM's ioapic.h IOAPIC_VERSION_ID).
IOAPIC_VERSION = 0x11
MPC_APIC_USABLE = 1

# Interrupt types (MP spec table 4-9).
MP_INT = 0
MP_NMI = 1
MP_EXTINT = 3
#: irqflag 0: polarity and trigger "conform to the bus" (ISA: active high, edge).
MP_IRQPOL_DEFAULT = 0

#: Linux matches an interrupt entry's source bus against the PCI bus number (io_apic.c
#: IO_APIC_get_PCI_irq_vector), so PCI bus 0 is MP bus 0 and ISA comes after (as in kvmtool).
BUS_ID_PCI = 0
BUS_ID_ISA = 1
#: PCI slots whose INTA# the table routes (slot 0 is the host bridge).
PCI_SLOTS = range(1, 32)
#: destapic 0xFF in a local interrupt entry: every local APIC.
MP_APIC_ALL = 0xFF

MPC_SPEC_1_4 = 4
MPC_OEM = b"XVM     "
MPC_PRODUCT_ID = b"XVM-PC      "

_MPF = struct.Struct("<4sIBBBBBBBB")  # struct mpf_intel, 16 bytes
_MPC_HEADER = struct.Struct("<4sHBB8s12sIHHII")  # struct mpc_table, 44 bytes
_MPC_CPU = struct.Struct("<BBBBII8x")  # 20 bytes
_MPC_BUS = struct.Struct("<BB6s")
_MPC_IOAPIC = struct.Struct("<BBBBI")
_MPC_INTSRC = struct.Struct("<BBHBBBB")  # also struct mpc_lintsrc

#: xAPIC IDs are 8 bits and 0xFF is the broadcast ID; the IOAPIC takes the ID after the CPUs.
MAX_MPTABLE_CPUS = 0xFE


def checksum8(data: bytes) -> int:
    """The byte that makes `data` plus itself sum to 0 mod 256 (MP spec 4.1; ACPI 5.2.5.3 alike)."""
    return -sum(data) & 0xFF


def _with_checksum(blob: bytearray, offset: int) -> bytes:
    blob[offset] = 0
    blob[offset] = checksum8(blob)
    return bytes(blob)


def mptable_size(cpus: int) -> int:
    """Bytes of floating pointer + configuration table for `cpus` CPUs."""
    entries = (
        cpus * _MPC_CPU.size
        + 2 * _MPC_BUS.size
        + _MPC_IOAPIC.size
        + (layout.IOAPIC_PINS - len(layout.PCI_INTX_IRQS) + len(PCI_SLOTS) + 2) * _MPC_INTSRC.size
    )
    return _MPF.size + _MPC_HEADER.size + entries


def build_mptable(cpus: int, base: int = layout.MPTABLE_START) -> bytes:
    """Floating pointer at `base` followed by the configuration table, ready to copy to `base`."""
    if not 1 <= cpus <= MAX_MPTABLE_CPUS:
        raise ConfigError(
            f"--cpus {cpus}: the MP table holds 1 to {MAX_MPTABLE_CPUS} CPUs; use --cpus {MAX_MPTABLE_CPUS} or fewer"
        )
    if base + mptable_size(cpus) > layout.ACPI_RSDP_START:
        raise ConfigError(f"--cpus {cpus}: the MP table would not fit below the ACPI tables; use fewer CPUs")
    ioapic_id = cpus
    entries = []
    for cpu in range(cpus):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if cpu == 0 else 0)
        entries.append(
            _MPC_CPU.pack(
                MP_PROCESSOR, cpu, APIC_VERSION, flags, CPU_SIGNATURE, CPU_FEATURE_APIC | CPU_FEATURE_FPU
            )
        )
    entries.append(_MPC_BUS.pack(MP_BUS, BUS_ID_PCI, b"PCI   "))
    entries.append(_MPC_BUS.pack(MP_BUS, BUS_ID_ISA, b"ISA   "))
    entries.append(_MPC_IOAPIC.pack(MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE, layout.IOAPIC_START))
    # Every IOAPIC pin as an ISA IRQ, like Firecracker: ISA IRQs 0-15 plus the pins virtio-mmio
    # devices may be given above 15. IRQ 0 (the PIT) goes where layout says the engine routes it.
    # The pins carrying PCI INTx are PCI's alone (level, active low: "conforms to the bus").
    for irq in range(layout.IOAPIC_PINS):
        if irq in layout.PCI_INTX_IRQS:
            continue
        pin = layout.PIT_IOAPIC_PIN if irq == layout.IRQ_PIT else irq
        entries.append(_MPC_INTSRC.pack(MP_INTSRC, MP_INT, MP_IRQPOL_DEFAULT, BUS_ID_ISA, irq, ioapic_id, pin))
    # PCI INTA# of slot n -> PCI_INTX_IRQS[(n - 1) % len] (machine/pci_devices.py wires the same;
    # srcbusirq = slot << 2 | pin - 1, MP spec 4.3.4).
    for slot in PCI_SLOTS:
        irq = layout.PCI_INTX_IRQS[(slot - 1) % len(layout.PCI_INTX_IRQS)]
        entries.append(_MPC_INTSRC.pack(MP_INTSRC, MP_INT, MP_IRQPOL_DEFAULT, BUS_ID_PCI, slot << 2, ioapic_id, irq))
    # Virtual-wire mode (MP spec 3.6.2.2): the 8259 reaches the BSP's LINT0 as ExtINT (as in SeaBIOS and
    # Firecracker; Linux masks LINT0 on the APs anyway); NMI goes to LINT1 of every local APIC.
    entries.append(_MPC_INTSRC.pack(MP_LINTSRC, MP_EXTINT, MP_IRQPOL_DEFAULT, BUS_ID_ISA, 0, 0, 0))
    entries.append(_MPC_INTSRC.pack(MP_LINTSRC, MP_NMI, MP_IRQPOL_DEFAULT, BUS_ID_ISA, 0, MP_APIC_ALL, 1))
    body = b"".join(entries)

    table_addr = base + _MPF.size
    header = _MPC_HEADER.pack(
        b"PCMP",
        _MPC_HEADER.size + len(body),
        MPC_SPEC_1_4,
        0,
        MPC_OEM,
        MPC_PRODUCT_ID,
        0,
        0,
        len(entries),
        layout.LAPIC_START,
        0,
    )
    table = _with_checksum(bytearray(header + body), 7)
    # feature1 = 0: a configuration table follows; feature2 bit 7 = 0: no IMCR, virtual-wire mode.
    mpf = _with_checksum(bytearray(_MPF.pack(b"_MP_", table_addr, 1, MPC_SPEC_1_4, 0, 0, 0, 0, 0, 0)), 10)
    return mpf + table


def write_mptable(memory: GuestMemory, cpus: int) -> None:
    """Write the MP tables for `cpus` CPUs (APIC IDs 0..cpus-1, CPU 0 the BSP) at MPTABLE_START."""
    memory.write(layout.MPTABLE_START, build_mptable(cpus))
