"""ACPI tables walked from the RSDP as Linux does: checksums, pointers, MADT contents."""

from __future__ import annotations

import struct

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.acpi import FADT_F_HW_REDUCED_ACPI, FADT_F_RESET_REG_SUP, write_acpi_tables
from xvm.memory.guest_memory import GuestMemory


@pytest.fixture
def memory():
    mem = GuestMemory.allocate(16 << 20)
    yield mem
    mem.close()


def _table(memory, addr: int) -> bytes:
    length = memory.read_u32(addr + 4)
    blob = memory.read(addr, length)
    assert sum(blob) & 0xFF == 0, f"bad checksum in {blob[:4]!r}"
    return blob


def _tables(memory, cpus: int) -> dict[bytes, bytes]:
    rsdp_addr = write_acpi_tables(memory, cpus)
    assert rsdp_addr == layout.ACPI_RSDP_START
    # Linux scans 0xE0000-0xFFFFF on 16-byte boundaries.
    assert 0xE0000 <= rsdp_addr < 0x100000 and rsdp_addr % 16 == 0
    rsdp = memory.read(rsdp_addr, 36)
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    rsdt_addr, length, xsdt_addr = struct.unpack_from("<IIQ", rsdp, 16)
    assert length == 36
    xsdt = _table(memory, xsdt_addr)
    rsdt = _table(memory, rsdt_addr)
    assert xsdt[:4] == b"XSDT" and rsdt[:4] == b"RSDT"
    pointers = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert list(pointers) == list(struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36))
    tables = {b"XSDT": xsdt, b"RSDT": rsdt}
    for addr in pointers:
        blob = _table(memory, addr)
        tables[blob[:4]] = blob
    fadt = tables[b"FACP"]
    dsdt_addr = struct.unpack_from("<I", fadt, 40)[0]
    assert struct.unpack_from("<Q", fadt, 140)[0] == dsdt_addr
    tables[b"DSDT"] = _table(memory, dsdt_addr)
    return tables


def test_tables_and_checksums(memory):
    tables = _tables(memory, 1)
    assert set(tables) == {b"XSDT", b"RSDT", b"FACP", b"APIC", b"DSDT"}
    assert len(tables[b"DSDT"]) == 36  # header only


def test_fadt_is_hardware_reduced_with_i8042_reset(memory):
    fadt = _tables(memory, 1)[b"FACP"]
    assert len(fadt) == 276 and fadt[8] == 6
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & FADT_F_HW_REDUCED_ACPI and flags & FADT_F_RESET_REG_SUP
    space, width, _, _, address = struct.unpack_from("<BBBBQ", fadt, 116)
    assert (space, width, address, fadt[128]) == (1, 8, layout.PORT_I8042_CMD, 0xFE)


@pytest.mark.parametrize("cpus", [1, 2, 8, 64])
def test_madt_lists_every_cpu_and_the_ioapic(memory, cpus):
    madt = _tables(memory, cpus)[b"APIC"]
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == layout.LAPIC_START and flags == 1
    found = {0: [], 1: [], 2: [], 4: []}
    offset = 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        found[kind].append(madt[offset:offset + length])
        offset += length
    assert offset == len(madt)
    lapics = [struct.unpack("<BBBBI", e) for e in found[0]]
    assert [(uid, apic_id, f) for _, _, uid, apic_id, f in lapics] == [(i, i, 1) for i in range(cpus)]
    (ioapic,) = found[1]
    assert struct.unpack("<BBBBII", ioapic) == (1, 12, cpus, 0, layout.IOAPIC_START, 0)
    (override,) = found[2]
    assert struct.unpack("<BBBBIH", override) == (2, 10, 0, 0, layout.PIT_IOAPIC_PIN, 0)
    (nmi,) = found[4]
    assert struct.unpack("<BBBHB", nmi) == (4, 6, 0xFF, 0, 1)


def test_tables_stay_between_the_mp_table_and_the_bios_area():
    from xvm.arch.x86.acpi import build_acpi_tables

    placed = sorted(build_acpi_tables(254))
    assert placed[0][0] == layout.ACPI_RSDP_START
    assert placed[0][0] + len(placed[0][1]) <= placed[1][0] == layout.ACPI_TABLES_START
    for (addr, blob), (next_addr, _) in zip(placed, placed[1:]):
        assert addr + len(blob) <= next_addr
    assert placed[-1][0] + len(placed[-1][1]) <= layout.BIOS_ROM_START
