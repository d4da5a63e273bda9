"""Boot GDT, identity map and BSP state, checked against the SDM's VM-entry rules."""

from __future__ import annotations

import struct

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.boot_cpu import (
    BOOT_CS,
    BOOT_DS,
    BOOT_TSS,
    GDT_32BIT,
    GDT_64BIT,
    gdt_entry,
    linux_64bit_state,
    protected_32bit_state,
    segment_from_descriptor,
    setup_long_mode,
    setup_protected_mode,
)
from xvm.arch.x86.regs import CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, Segment
from xvm.memory.guest_memory import GuestMemory


@pytest.fixture
def memory():
    mem = GuestMemory.allocate(16 << 20)
    yield mem
    mem.close()


def test_descriptors_match_linux_and_firecracker():
    # The encodings Linux's GDT_ENTRY() and Firecracker's gdt_entry() produce.
    assert gdt_entry(0xA09B, 0, 0xFFFFF) == 0x00AF9B000000FFFF
    assert gdt_entry(0xC09B, 0, 0xFFFFF) == 0x00CF9B000000FFFF
    assert gdt_entry(0xC093, 0, 0xFFFFF) == 0x00CF93000000FFFF
    assert gdt_entry(0x808B, 0, 0xFFFFF) == 0x008F8B000000FFFF
    assert gdt_entry(0x4093, 0x12345678, 0xABCDE) == 0x124A93345678BCDE


def test_segment_from_descriptor_decodes_every_field():
    seg = segment_from_descriptor(gdt_entry(0x40F3, 0x12345678, 0xABCDE), 0x2B)
    assert seg == Segment(
        base=0x12345678, limit=0xABCDE, selector=0x2B, type_=3, present=True, dpl=3, db=1, s=1, l=0, g=0
    )
    assert segment_from_descriptor(0, 0).unusable


def _check_vm_entry_segments(sregs, long_mode: bool) -> None:
    """The guest segment-register checks of SDM Vol. 3 26.3.1.2 (unrestricted guest off)."""
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr"):
        seg = getattr(sregs, name)
        assert seg.present and not seg.unusable, name
        # Limit/granularity consistency.
        if seg.limit & 0xFFF != 0xFFF:
            assert seg.g == 0, name
        if seg.limit > 0xFFFFF:
            assert seg.g == 1, name
    cs = sregs.cs
    assert cs.s == 1 and cs.type_ in (9, 11, 13, 15)
    assert not (cs.l and cs.db)
    assert cs.l == (1 if long_mode else 0)
    assert sregs.ss.type_ in (3, 7) and sregs.ss.dpl == cs.dpl == 0
    assert sregs.ss.selector & 3 == cs.selector & 3
    for name in ("ds", "es", "fs", "gs"):
        seg = getattr(sregs, name)
        assert seg.s == 1 and seg.type_ & 1  # accessed
    assert sregs.tr.s == 0 and sregs.tr.type_ == 11 and not sregs.tr.selector & 4
    assert sregs.ldt.unusable


def _check_gdt_agrees(memory, sregs, gdt) -> None:
    blob = memory.read(layout.BOOT_GDT_START, len(gdt) * 8)
    assert list(struct.unpack(f"<{len(gdt)}Q", blob)) == list(gdt)
    assert sregs.gdt.base == layout.BOOT_GDT_START and sregs.gdt.limit == len(gdt) * 8 - 1
    assert layout.BOOT_GDT_START + len(gdt) * 8 <= layout.BOOT_IDT_START
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr"):
        seg = getattr(sregs, name)
        assert seg == segment_from_descriptor(gdt[seg.selector >> 3], seg.selector), name


def test_linux_64bit_state(memory):
    setup_long_mode(memory)
    regs, sregs = linux_64bit_state(0x100200, layout.ZERO_PAGE_START)
    assert (regs.rip, regs.rsi, regs.rsp, regs.rbp, regs.rflags) == (
        0x100200,
        layout.ZERO_PAGE_START,
        layout.BOOT_STACK_POINTER,
        layout.BOOT_STACK_POINTER,
        2,
    )
    assert sregs.cr0 == CR0_PE | CR0_ET | CR0_NE | CR0_PG
    assert sregs.cr4 == CR4_PAE and sregs.cr3 == layout.PML4_START
    assert sregs.efer == EFER_LME | EFER_LMA
    assert (sregs.cs.selector, sregs.ds.selector, sregs.tr.selector) == (BOOT_CS, BOOT_DS, BOOT_TSS)
    assert sregs.idt.base == layout.BOOT_IDT_START and sregs.idt.limit == 0
    _check_vm_entry_segments(sregs, long_mode=True)
    _check_gdt_agrees(memory, sregs, GDT_64BIT)


def test_protected_32bit_state(memory):
    setup_protected_mode(memory)
    regs, sregs = protected_32bit_state(0x100000, 0x2BADB002, 0x30000)
    assert (regs.rip, regs.rax, regs.rbx, regs.rflags) == (0x100000, 0x2BADB002, 0x30000, 2)
    assert sregs.cr0 == CR0_PE | CR0_ET and sregs.efer == 0 and sregs.cr4 == 0
    assert sregs.cs.db == 1 and sregs.cs.limit == 0xFFFFFFFF and sregs.cs.base == 0
    _check_vm_entry_segments(sregs, long_mode=False)
    _check_gdt_agrees(memory, sregs, GDT_32BIT)


def _translate(memory, linear: int) -> int:
    """Walk the boot page tables (4-level, 2 MiB pages) like the MMU would."""
    pml4e = memory.read_u64(layout.PML4_START + ((linear >> 39) & 511) * 8)
    assert pml4e & 1
    pdpte = memory.read_u64((pml4e & ~0xFFF) + ((linear >> 30) & 511) * 8)
    assert pdpte & 1 and not pdpte & 0x80
    pde = memory.read_u64((pdpte & 0xFFFFFFFFFF000) + ((linear >> 21) & 511) * 8)
    assert pde & 0x83 == 0x83
    return (pde & ~0x1FFFFF & 0xFFFFFFFFFFFFF) | (linear & 0x1FFFFF)


@pytest.mark.parametrize("linear", [0, 0x7000, 0x100200, 0x1234567, 0xBFFFFFFF, 0xFEE00000, 0xFFFFFFFF])
def test_identity_map_covers_the_first_4gib(memory, linear):
    setup_long_mode(memory)
    assert _translate(memory, linear) == linear


def test_page_tables_fit_their_slots():
    assert layout.PDPTE_START == layout.PML4_START + 0x1000
    assert layout.PDE_START == layout.PDPTE_START + 0x1000
    assert layout.PDE_START + layout.BOOT_PD_COUNT * 0x1000 <= layout.CMDLINE_START
    assert layout.BOOT_STACK_POINTER < layout.PML4_START
