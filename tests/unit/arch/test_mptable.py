"""MP spec 1.4 tables: checksums, one processor entry per CPU, IOAPIC and interrupt wiring."""

from __future__ import annotations

import struct

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.mptable import MAX_MPTABLE_CPUS, build_mptable, mptable_size, write_mptable
from xvm.errors import ConfigError
from xvm.memory.guest_memory import GuestMemory

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def _parse(blob: bytes, base: int = layout.MPTABLE_START):
    """Read the tables the way Linux's mpparse.c does; return (mpf, header, entries by type)."""
    assert blob[:4] == b"_MP_"
    assert sum(blob[:16]) & 0xFF == 0
    physptr, length, spec = struct.unpack_from("<IBB", blob, 4)
    assert (length, spec) == (1, 4)
    table = blob[physptr - base:]
    sig, table_len, spec, _, oem, product, _, _, count, lapic, _ = struct.unpack_from("<4sHBB8s12sIHHII", table)
    assert sig == b"PCMP" and spec == 4 and lapic == layout.LAPIC_START
    assert sum(table[:table_len]) & 0xFF == 0
    entries = {t: [] for t in ENTRY_SIZES}
    offset = 44
    for _ in range(count):
        kind = table[offset]
        entries[kind].append(table[offset:offset + ENTRY_SIZES[kind]])
        offset += ENTRY_SIZES[kind]
    assert offset == table_len
    return entries


@pytest.mark.parametrize("cpus", [1, 2, 8, 64])
def test_one_processor_entry_per_cpu(cpus):
    blob = build_mptable(cpus)
    assert len(blob) == mptable_size(cpus)
    entries = _parse(blob)
    processors = [struct.unpack_from("<BBBBII", e) for e in entries[0]]
    assert [p[1] for p in processors] == list(range(cpus))  # APIC IDs 0..N-1
    assert [p[3] for p in processors] == [3] + [1] * (cpus - 1)  # enabled; CPU 0 is the BSP
    assert all(p[5] & (1 << 9) for p in processors)  # APIC feature flag
    pci, isa = entries[1]
    assert (pci[1], pci[2:8]) == (0, b"PCI   ")  # Linux matches PCI bus 0 against MP bus 0
    assert (isa[1], isa[2:8]) == (1, b"ISA   ")
    (ioapic,) = entries[2]
    assert struct.unpack("<BBBBI", ioapic) == (2, cpus, 0x11, 1, layout.IOAPIC_START)


def test_interrupt_wiring():
    entries = _parse(build_mptable(2))
    intsrc = [struct.unpack("<BBHBBBB", e) for e in entries[3]]
    isa = [(e[4], e[6]) for e in intsrc if e[3] == 1]
    # ISA IRQs 1:1 (the PIT where the engine routes it), except the pins PCI INTx owns.
    assert isa == [(irq, layout.PIT_IOAPIC_PIN if irq == 0 else irq)
                   for irq in range(layout.IOAPIC_PINS) if irq not in layout.PCI_INTX_IRQS]
    pci = [(e[4], e[6]) for e in intsrc if e[3] == 0]
    # INTA# of slot n (srcbusirq = n << 2) goes to the IRQ machine/pci_devices.py gives slot n.
    assert pci == [(slot << 2, layout.PCI_INTX_IRQS[(slot - 1) % len(layout.PCI_INTX_IRQS)]) for slot in range(1, 32)]
    assert all(e[1] == 0 and e[5] == 2 for e in intsrc)  # INT entries, IOAPIC id = cpus
    lint = [struct.unpack("<BBHBBBB", e) for e in entries[4]]
    assert [(e[1], e[5], e[6]) for e in lint] == [(3, 0, 0), (1, 0xFF, 1)]  # ExtINT on the BSP's LINT0, NMI on LINT1


def test_cpu_limit():
    build_mptable(MAX_MPTABLE_CPUS)
    with pytest.raises(ConfigError, match="use --cpus 254 or fewer"):
        build_mptable(MAX_MPTABLE_CPUS + 1)
    with pytest.raises(ConfigError):
        build_mptable(0)


def test_written_where_linux_scans():
    memory = GuestMemory.allocate(16 << 20)
    try:
        write_mptable(memory, 4)
        # smp_scan_config() looks at the last KiB of base memory (639-640 KiB).
        assert 639 * 1024 <= layout.MPTABLE_START < 640 * 1024
        blob = memory.read(layout.MPTABLE_START, mptable_size(4))
        assert len(_parse(blob)[0]) == 4
        assert layout.MPTABLE_START + mptable_size(4) <= layout.ACPI_RSDP_START
    finally:
        memory.close()
