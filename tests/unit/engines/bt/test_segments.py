"""Segment loads, descriptor caches, far transfers through call gates, RETF/IRET."""

from __future__ import annotations

import pytest

from xvm.arch.x86.regs import CR0_PE, EFER_LMA, EFER_LME, RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM
from xvm.engines.bt import segments
from xvm.engines.bt.faults import GP, NP, SS_FAULT, GuestFault
from xvm.engines.bt.mmu import Mmu
from xvm.engines.bt.stack import pop, push
from xvm.engines.bt.state import CS, DS, ES, FS, GS, MODE_LONG, MODE_V86, RSP, SS, CpuState
from xvm.memory.guest_memory import GuestMemory

GDT, TSS, LDT_BASE = 0x1000, 0x3000, 0x4000
K_CODE, K_DATA, U_CODE, U_DATA, TSS_SEL, K_CODE64, GATE, ABSENT, RO_DATA, XO_CODE, LDT_SEL, CONF = (
    0x08, 0x10, 0x1B, 0x23, 0x28, 0x30, 0x3B, 0x40, 0x48, 0x50, 0x58, 0x60)


def desc(base: int, limit: int, access: int, flags: int = 0xC) -> int:
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40 | ((limit >> 16) & 0xF) << 48
            | flags << 52 | (base >> 24) << 56)


def gate(selector: int, offset: int, access: int, params: int = 0) -> int:
    return (offset & 0xFFFF) | selector << 16 | params << 32 | access << 40 | (offset >> 16) << 48


class NoIo:
    def read(self, paddr: int, size: int) -> int:
        return 0xFF

    def write(self, paddr: int, size: int, value: int) -> None:
        pass


def machine(cpl: int = 0):
    """Flat protected mode, no paging, GDT/TSS/LDT as in the selectors above."""
    mem = GuestMemory.allocate(1 << 20)
    entries = {
        K_CODE: desc(0, 0xFFFFF, 0x9A), K_DATA: desc(0, 0xFFFFF, 0x92),
        U_CODE: desc(0, 0xFFFFF, 0xFA), U_DATA: desc(0, 0xFFFFF, 0xF2),
        TSS_SEL: desc(TSS, 0x67, 0x89, 0), K_CODE64: desc(0, 0xFFFFF, 0x9A, 0xA),
        GATE: gate(K_CODE, 0x5000, 0xEC, 2), ABSENT: desc(0, 0xFFFF, 0x12),
        RO_DATA: desc(0x10000, 0xFFFF, 0x90, 0), XO_CODE: desc(0, 0xFFFF, 0x98, 0x4),
        LDT_SEL: desc(LDT_BASE, 0x1F, 0x82, 0), CONF: desc(0, 0xFFFFF, 0x9E),
    }
    for sel, value in entries.items():
        mem.write_u64(GDT + (sel & ~7), value)
    mem.write_u64(LDT_BASE + 8, desc(0x20000, 0xFFF, 0x92, 0))           # LDT selector 0x0C
    mem.write_u32(TSS + 4, 0x9000)                                       # ESP0
    mem.write_u16(TSS + 8, K_DATA)                                       # SS0
    cpu = CpuState()
    cpu.cr0 |= CR0_PE
    cpu.gdtr_base, cpu.gdtr_limit = GDT, 0xFF
    mmu = Mmu(mem, cpu, NoIo())
    cpu.segs[CS] = segments.descriptor_cache(K_CODE, entries[K_CODE])
    cpu.segs[SS] = segments.descriptor_cache(K_DATA, entries[K_DATA])
    cpu.refresh_mode()
    segments.load_tr(cpu, mmu, TSS_SEL)
    if cpl == 3:
        cpu.segs[CS] = segments.descriptor_cache(U_CODE, entries[U_CODE])
        cpu.segs[SS] = segments.descriptor_cache(U_DATA, entries[U_DATA])
        cpu.cpl = 3
        cpu.refresh_mode()
    cpu.regs[RSP] = 0x8000
    return mem, cpu, mmu


def fault_of(fn, *args) -> tuple:
    with pytest.raises(GuestFault) as info:
        fn(*args)
    return info.value.vector, info.value.error_code


# --- data and stack segment loads ------------------------------------------------
def test_load_fills_the_cache_sets_accessed_and_is_isolated_from_later_gdt_writes():
    mem, cpu, mmu = machine()
    segments.load_segment(cpu, mmu, DS, RO_DATA)
    ds = cpu.segs[DS]
    assert (ds.selector, ds.base, ds.limit, ds.access) == (RO_DATA, 0x10000, 0xFFFF, 0x91)
    assert mem.read_u64(GDT + RO_DATA) >> 40 & 1
    # The guest rewrites the descriptor: the loaded segment does not change...
    mem.write_u64(GDT + RO_DATA, desc(0x50000, 0xF, 0x92, 0))
    assert (cpu.segs[DS].base, cpu.segs[DS].limit) == (0x10000, 0xFFFF)
    # ...until the next load.
    segments.load_segment(cpu, mmu, DS, RO_DATA)
    assert (cpu.segs[DS].base, cpu.segs[DS].limit) == (0x50000, 0xF)


def test_data_segment_faults():
    mem, cpu, mmu = machine(cpl=3)
    assert fault_of(segments.load_segment, cpu, mmu, DS, 0x100) == (GP, 0x100)        # beyond the GDT limit
    assert fault_of(segments.load_segment, cpu, mmu, DS, TSS_SEL) == (GP, TSS_SEL)     # system segment
    assert fault_of(segments.load_segment, cpu, mmu, DS, XO_CODE | 3) == (GP, XO_CODE)  # execute-only
    assert fault_of(segments.load_segment, cpu, mmu, ES, K_DATA | 3) == (GP, K_DATA)    # DPL < CPL
    assert fault_of(segments.load_segment, cpu, mmu, ES, 0x0C | 3) == (GP, 0x0C)       # LDT not loaded
    segments.load_segment(cpu, mmu, FS, CONF | 3)                                        # conforming: no DPL check
    segments.load_segment(cpu, mmu, GS, 0)                                               # null is fine
    assert not cpu.segs[GS].present


def test_rpl_above_dpl_and_not_present():
    mem, cpu, mmu = machine()
    assert fault_of(segments.load_segment, cpu, mmu, DS, K_DATA | 1) == (GP, K_DATA)
    mem.write_u64(GDT + ABSENT, desc(0, 0xFFFF, 0x12))
    assert fault_of(segments.load_segment, cpu, mmu, DS, ABSENT) == (NP, ABSENT)
    assert fault_of(segments.load_segment, cpu, mmu, SS, ABSENT) == (SS_FAULT, ABSENT)


def test_stack_segment_faults():
    mem, cpu, mmu = machine()
    assert fault_of(segments.load_segment, cpu, mmu, SS, 0) == (GP, 0)
    assert fault_of(segments.load_segment, cpu, mmu, SS, K_DATA | 3) == (GP, K_DATA)   # RPL != CPL
    assert fault_of(segments.load_segment, cpu, mmu, SS, RO_DATA) == (GP, RO_DATA)      # not writable
    assert fault_of(segments.load_segment, cpu, mmu, SS, U_DATA & ~3) == (GP, U_DATA & ~3)  # DPL != CPL
    segments.load_segment(cpu, mmu, SS, K_DATA)
    assert cpu.stack_bits == 32


def test_null_ss_allowed_in_64bit_mode_below_ring_3():
    mem, cpu, mmu = machine()
    cpu.efer = EFER_LME | EFER_LMA
    cpu.segs[CS] = segments.descriptor_cache(K_CODE64, mem.read_u64(GDT + K_CODE64))
    cpu.refresh_mode()
    assert cpu.mode == MODE_LONG
    segments.load_segment(cpu, mmu, SS, 0)
    assert cpu.segs[SS].selector == 0 and not cpu.segs[SS].present


def test_ldt_and_tr():
    mem, cpu, mmu = machine()
    segments.load_ldtr(cpu, mmu, LDT_SEL)
    segments.load_segment(cpu, mmu, ES, 0x0C)
    assert cpu.segs[ES].base == 0x20000
    assert fault_of(segments.load_ldtr, cpu, mmu, K_DATA) == (GP, K_DATA)
    # load_tr marked the TSS busy: loading it again faults.
    assert (mem.read_u64(GDT + TSS_SEL) >> 40) & 0xF == 0xB
    assert fault_of(segments.load_tr, cpu, mmu, TSS_SEL) == (GP, TSS_SEL)


def test_real_and_v86_mode_loads():
    mem, cpu, mmu = machine()
    cpu.cr0 &= ~CR0_PE
    cpu.refresh_mode()
    limit = cpu.segs[DS].limit
    segments.load_segment(cpu, mmu, DS, 0x1234)
    assert (cpu.segs[DS].base, cpu.segs[DS].limit) == (0x12340, limit)
    segments.far_jump(cpu, mmu, 0x2000, 0x10, 2)
    assert (cpu.segs[CS].base, cpu.rip) == (0x20000, 0x10)


def test_lar_lsl_verr_verw():
    mem, cpu, mmu = machine(cpl=3)
    assert segments.lar(cpu, mmu, U_DATA) == 0x00C0F200
    assert segments.lar(cpu, mmu, K_DATA) is None             # DPL 0 < CPL 3
    assert segments.lar(cpu, mmu, CONF) is not None           # conforming code: visible
    assert segments.lsl(cpu, mmu, U_DATA) == 0xFFFFFFFF
    assert segments.lsl(cpu, mmu, 0x100) is None
    assert segments.verr(cpu, mmu, U_CODE) and segments.verw(cpu, mmu, U_DATA)
    assert not segments.verw(cpu, mmu, U_CODE) and not segments.verr(cpu, mmu, K_DATA)


# --- far transfers ------------------------------------------------------------------
def test_far_jump_checks():
    mem, cpu, mmu = machine()
    assert fault_of(segments.far_jump, cpu, mmu, 0, 0, 4) == (GP, 0)
    assert fault_of(segments.far_jump, cpu, mmu, U_CODE, 0, 4) == (GP, U_CODE & ~3)   # DPL != CPL
    assert fault_of(segments.far_jump, cpu, mmu, RO_DATA, 0, 4) == (GP, RO_DATA)      # not code
    assert fault_of(segments.far_jump, cpu, mmu, XO_CODE, 0x10000, 4) == (GP, 0)      # beyond limit
    segments.far_jump(cpu, mmu, K_CODE, 0x1234, 4)
    assert (cpu.segs[CS].selector, cpu.rip, cpu.cpl) == (K_CODE, 0x1234, 0)


def test_call_gate_to_ring0_copies_parameters_and_retf_returns_to_ring3():
    mem, cpu, mmu = machine(cpl=3)
    segments.load_segment(cpu, mmu, DS, U_DATA)
    push(cpu, mmu, 0x1111, 4)   # first parameter
    push(cpu, mmu, 0x2222, 4)   # second
    segments.far_call(cpu, mmu, GATE, 0xDEAD, 4, 0x4567)
    assert (cpu.cpl, cpu.segs[CS].selector, cpu.rip) == (0, K_CODE, 0x5000)
    assert (cpu.segs[SS].selector, cpu.regs[RSP]) == (K_DATA, 0x9000 - 6 * 4)
    assert [mem.read_u32(0x9000 - 4 * i) for i in range(1, 7)] == [U_DATA, 0x7FF8, 0x1111, 0x2222, U_CODE,
                                                                   0x4567]
    # The ring-0 code loads a DPL-0 data segment into DS; RETF 8 to ring 3 nulls it.
    segments.load_segment(cpu, mmu, DS, K_DATA)
    segments.far_return(cpu, mmu, 4, 8)
    assert (cpu.cpl, cpu.rip, cpu.segs[SS].selector, cpu.regs[RSP]) == (3, 0x4567, U_DATA, 0x8000)
    assert cpu.segs[DS].selector == 0 and not cpu.segs[DS].present


def test_call_gate_dpl_and_far_return_checks():
    mem, cpu, mmu = machine(cpl=3)
    mem.write_u64(GDT + GATE, gate(K_CODE, 0x5000, 0xCC))       # gate DPL 0
    assert fault_of(segments.far_call, cpu, mmu, GATE, 0, 4, 0) == (GP, GATE & ~3)
    mem, cpu, mmu = machine(cpl=3)
    push(cpu, mmu, K_CODE, 4)   # a return may not go to a more privileged ring
    push(cpu, mmu, 0x10, 4)
    assert fault_of(segments.far_return, cpu, mmu, 4, 0) == (GP, K_CODE)


def test_stack_limit_raises_ss_and_keeps_rsp():
    mem, cpu, mmu = machine()
    cpu.segs[SS] = segments.descriptor_cache(RO_DATA, desc(0x10000, 0xFF, 0x93, 0))
    cpu.refresh_mode()
    cpu.regs[RSP] = 0x102
    assert fault_of(push, cpu, mmu, 1, 4) == (SS_FAULT, 0)
    assert cpu.regs[RSP] == 0x102
    cpu.regs[RSP] = 0x100
    push(cpu, mmu, 0xABCD, 2)
    assert (cpu.regs[RSP], mem.read_u16(0x100FE)) == (0xFE, 0xABCD)
    assert pop(cpu, mmu, 2) == 0xABCD


def test_iret_to_virtual_8086_mode():
    mem, cpu, mmu = machine()
    frame = [0x0100, 0x2000, RFLAGS_VM | RFLAGS_IF | RFLAGS_IOPL | 2, 0x0FFE, 0x3000, 0x4000, 0x5000, 0x6000,
             0x7000]
    cpu.regs[RSP] = 0x8000 - 4 * len(frame)
    for i, value in enumerate(frame):
        mem.write_u32(cpu.regs[RSP] + 4 * i, value)
    segments.interrupt_return(cpu, mmu, 4)
    assert cpu.mode == MODE_V86 and cpu.cpl == 3
    assert (cpu.segs[CS].base, cpu.rip, cpu.segs[SS].base, cpu.regs[RSP]) == (0x20000, 0x100, 0x30000, 0xFFE)
    assert [cpu.segs[s].base for s in (ES, DS, FS, GS)] == [0x40000, 0x50000, 0x60000, 0x70000]


# --- task switches -------------------------------------------------------------------
TSS2, TSS2_SEL, TASK_GATE_SEL = 0x3100, 0x68, 0x70


def second_task(mem) -> None:
    """A 32-bit TSS at TSS2 whose task starts at 0x6000 with EAX=0x11111111 and ESP=0x7000."""
    mem.write_u64(GDT + TSS2_SEL, desc(TSS2, 0x67, 0x89, 0))
    mem.write_u64(GDT + TASK_GATE_SEL, gate(TSS2_SEL, 0, 0xE5))
    mem.write_u32(TSS2 + 0x20, 0x6000)
    mem.write_u32(TSS2 + 0x24, 0x2)
    mem.write_u32(TSS2 + 0x28, 0x11111111)
    mem.write_u32(TSS2 + 0x38, 0x7000)
    for i, sel in enumerate((K_DATA, K_CODE, K_DATA, K_DATA, K_DATA, K_DATA)):
        mem.write_u32(TSS2 + 0x48 + 4 * i, sel)


def test_jmp_to_a_tss_saves_the_old_task_and_swaps_busy_bits():
    mem, cpu, mmu = machine()
    second_task(mem)
    cpu.regs[0] = 0xAAAA
    cpu.rip = 0x4321  # the executor has moved RIP past the JMP
    segments.far_jump(cpu, mmu, TSS2_SEL, 0, 4)
    assert (cpu.rip, cpu.regs[0], cpu.regs[RSP], cpu.tr.selector) == (0x6000, 0x11111111, 0x7000, TSS2_SEL)
    assert cpu.cr0 & 8  # CR0.TS
    assert (mem.read_u32(TSS + 0x20), mem.read_u32(TSS + 0x28), mem.read_u32(TSS + 0x38)) == (0x4321, 0xAAAA, 0x8000)
    assert (mem.read_u64(GDT + TSS_SEL) >> 40) & 0xF == 0x9      # old: available again
    assert (mem.read_u64(GDT + TSS2_SEL) >> 40) & 0xF == 0xB     # new: busy
    # Jumping to a busy TSS faults.
    assert fault_of(segments.far_jump, cpu, mmu, TSS2_SEL, 0, 4) == (GP, TSS2_SEL)


def test_call_through_a_task_gate_nests_and_iret_returns():
    mem, cpu, mmu = machine()
    second_task(mem)
    segments.far_call(cpu, mmu, TASK_GATE_SEL, 0, 4, 0x1234)
    assert cpu.rip == 0x6000 and cpu.rflags & 0x4000                 # NT set
    assert mem.read_u16(TSS2) == TSS_SEL                              # back link
    assert (mem.read_u64(GDT + TSS_SEL) >> 40) & 0xF == 0xB          # the caller stays busy
    segments.interrupt_return(cpu, mmu, 4)
    assert (cpu.tr.selector, cpu.rip, cpu.regs[RSP]) == (TSS_SEL, 0x1234, 0x8000)
    assert (mem.read_u64(GDT + TSS2_SEL) >> 40) & 0xF == 0x9
    assert mem.read_u32(TSS2 + 0x20) == 0x6000                         # EIP after the IRET was saved


def test_exception_through_a_task_gate_pushes_its_error_code_on_the_new_stack():
    from xvm.engines.bt.interrupts import deliver_fault

    mem, cpu, mmu = machine()
    second_task(mem)
    cpu.idtr_base, cpu.idtr_limit = 0x2000, 0x7FF
    mem.write_u64(0x2000 + 8 * 8, gate(TSS2_SEL, 0, 0x85))             # #DF through a task gate
    mem.write_u64(0x2000 + 8 * 13, gate(K_CODE, 0, 0x0E))              # #GP gate not present -> #NP
    deliver_fault(cpu, mmu, GuestFault(GP, 0), 0x99)                   # #GP then #NP: double fault
    assert (cpu.tr.selector, cpu.rip, cpu.regs[RSP]) == (TSS2_SEL, 0x6000, 0x7000 - 4)
    assert mem.read_u32(0x7000 - 4) == 0
    assert mem.read_u32(TSS + 0x20) == 0x99
