"""Exception and interrupt delivery: IVT, IDT (16/32/64-bit gates), privilege changes, IST, v86, #DF."""

from __future__ import annotations

import pytest

from xvm.arch.x86.regs import (
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_IF,
    RFLAGS_IOPL,
    RFLAGS_RF,
    RFLAGS_TF,
    RFLAGS_VM,
)
from xvm.engines.bt import interrupts, segments
from xvm.engines.bt.faults import DF, GP, NP, PF, GuestFault, TripleFault
from xvm.engines.bt.interrupts import KIND_EXCEPTION, KIND_EXTERNAL, KIND_SOFTWARE, deliver, deliver_fault
from xvm.engines.bt.mmu import Mmu
from xvm.engines.bt.state import CS, DS, ES, FS, GS, MODE_LONG, MODE_PROTECTED, MODE_V86, RSP, SS, CpuState
from xvm.memory.guest_memory import GuestMemory

GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
K_CODE, K_DATA, U_CODE, U_DATA, TSS_SEL, K_CODE64, U_CODE64, TSS64_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28, 0x30, 0x3B, 0x40


def desc(base: int, limit: int, access: int, flags: int = 0xC) -> int:
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40 | ((limit >> 16) & 0xF) << 48
            | flags << 52 | (base >> 24) << 56)


def gate(selector: int, offset: int, access: int, ist: int = 0) -> int:
    return (offset & 0xFFFF) | selector << 16 | ist << 32 | access << 40 | ((offset >> 16) & 0xFFFF) << 48


class NoIo:
    def read(self, paddr: int, size: int) -> int:
        return 0xFF

    def write(self, paddr: int, size: int, value: int) -> None:
        pass


def machine(long_mode: bool = False, cpl: int = 0):
    mem = GuestMemory.allocate(1 << 20)
    for sel, value in {K_CODE: desc(0, 0xFFFFF, 0x9B), K_DATA: desc(0, 0xFFFFF, 0x93),
                       U_CODE: desc(0, 0xFFFFF, 0xFB), U_DATA: desc(0, 0xFFFFF, 0xF3),
                       TSS_SEL: desc(TSS, 0x67, 0x8B, 0), K_CODE64: desc(0, 0xFFFFF, 0x9B, 0xA),
                       U_CODE64: desc(0, 0xFFFFF, 0xFB, 0xA), TSS64_SEL: desc(TSS, 0x67, 0x8B, 0)}.items():
        mem.write_u64(GDT + (sel & ~7), value)
    cpu = CpuState()
    cpu.cr0 |= CR0_PE
    cpu.gdtr_base, cpu.gdtr_limit = GDT, 0xFF
    cpu.idtr_base, cpu.idtr_limit = IDT, 0xFFF
    if long_mode:
        cpu.cr0 |= CR0_PG
        cpu.cr4 = CR4_PAE
        cpu.efer = EFER_LME | EFER_LMA
        cpu.cr3 = 0x10000
        mem.write_u64(0x10000, 0x11000 | 0x7)       # identity-map the first GiB with 2 MiB pages
        mem.write_u64(0x11000, 0x12000 | 0x7)
        for i in range(512):
            mem.write_u64(0x12000 + 8 * i, (i << 21) | 0x87)
        mem.write_u64(TSS + 4, 0x9000)              # RSP0
        mem.write_u64(TSS + 0x24 + 8, 0xA008)       # IST2 (misaligned on purpose)
    else:
        mem.write_u32(TSS + 4, 0x9000)              # ESP0
        mem.write_u16(TSS + 8, K_DATA)              # SS0
    mmu = Mmu(mem, cpu, NoIo())
    mmu.mode_changed()
    code = (U_CODE64 if long_mode else U_CODE) if cpl == 3 else (K_CODE64 if long_mode else K_CODE)
    cpu.segs[CS] = segments.descriptor_cache(code, mem.read_u64(GDT + (code & ~7)))
    data = U_DATA if cpl == 3 else K_DATA
    for s in (SS, DS, ES):
        cpu.segs[s] = segments.descriptor_cache(data, mem.read_u64(GDT + (data & ~7)))
    cpu.cpl = cpl
    cpu.tr = segments.descriptor_cache(TSS_SEL, mem.read_u64(GDT + TSS_SEL))
    cpu.rflags |= RFLAGS_IF
    cpu.regs[RSP] = 0x8000
    cpu.refresh_mode()
    return mem, cpu, mmu


def stack(mem, rsp: int, count: int, size: int) -> list:
    return [int.from_bytes(mem.read(rsp + size * i, size), "little") for i in range(count)]


def test_real_mode_ivt_delivery_and_iret():
    mem = GuestMemory.allocate(1 << 20)
    cpu = CpuState()
    cpu.cr0 &= ~CR0_PE
    cpu.idtr_base, cpu.idtr_limit = 0, 0x3FF
    cpu.segs[CS].selector, cpu.segs[CS].base = 0x1000, 0x10000
    cpu.rflags |= RFLAGS_IF | RFLAGS_TF
    cpu.refresh_mode()
    cpu.regs[RSP] = 0x100
    mem.write_u32(4 * 0x21, 0x2000_0123)     # 2000:0123
    mmu = Mmu(mem, cpu, NoIo())
    flags = cpu.rflags
    deliver(cpu, mmu, 0x21, None, KIND_SOFTWARE, 0x55)
    assert (cpu.segs[CS].base, cpu.rip, cpu.regs[RSP]) == (0x20000, 0x123, 0xFA)
    assert stack(mem, 0xFA, 3, 2) == [0x55, 0x1000, flags & 0xFFFF]
    assert not cpu.rflags & (RFLAGS_IF | RFLAGS_TF)
    segments.interrupt_return(cpu, mmu, 2)
    assert (cpu.segs[CS].selector, cpu.rip, cpu.regs[RSP], cpu.rflags) == (0x1000, 0x55, 0x100, flags)


def test_protected_same_ring_fault_pushes_error_code_and_rf():
    mem, cpu, mmu = machine()
    mem.write_u64(IDT + 8 * GP, gate(K_CODE, 0x4000, 0x8E))      # 32-bit interrupt gate
    flags = cpu.rflags
    deliver_fault(cpu, mmu, GuestFault(GP, 0x28), 0x1234)
    assert (cpu.segs[CS].selector, cpu.rip, cpu.regs[RSP]) == (K_CODE, 0x4000, 0x8000 - 16)
    assert stack(mem, 0x8000 - 16, 4, 4) == [0x28, 0x1234, K_CODE, flags | RFLAGS_RF]
    assert not cpu.rflags & RFLAGS_IF


def test_ring3_to_ring0_switches_to_the_tss_stack_and_iret_returns():
    mem, cpu, mmu = machine(cpl=3)
    mem.write_u64(IDT + 8 * 0x80, gate(K_CODE, 0x4000, 0xEF))    # 32-bit trap gate, DPL 3
    flags = cpu.rflags
    deliver(cpu, mmu, 0x80, None, KIND_SOFTWARE, 0x777)
    assert (cpu.cpl, cpu.segs[SS].selector, cpu.regs[RSP]) == (0, K_DATA, 0x9000 - 20)
    assert stack(mem, 0x9000 - 20, 5, 4) == [0x777, U_CODE, flags, 0x8000, U_DATA]
    assert cpu.rflags & RFLAGS_IF  # trap gate keeps IF
    segments.interrupt_return(cpu, mmu, 4)
    assert (cpu.cpl, cpu.segs[CS].selector, cpu.rip, cpu.segs[SS].selector, cpu.regs[RSP]) == (
        3, U_CODE, 0x777, U_DATA, 0x8000)
    assert cpu.mode == MODE_PROTECTED


def test_software_int_dpl_not_present_and_idt_limit():
    mem, cpu, mmu = machine(cpl=3)
    mem.write_u64(IDT + 8 * 0x30, gate(K_CODE, 0x4000, 0x8E))    # DPL 0
    mem.write_u64(IDT + 8 * 0x31, gate(K_CODE, 0x4000, 0x6E))    # not present
    for vector, kind, expected in [(0x30, KIND_SOFTWARE, (GP, 0x30 * 8 + 2)),
                                   (0x30, KIND_EXTERNAL, None),
                                   (0x31, KIND_EXTERNAL, (NP, 0x31 * 8 + 3))]:
        if expected is None:
            deliver(cpu, mmu, vector, None, kind, 0)
            continue
        with pytest.raises(GuestFault) as info:
            deliver(cpu, mmu, vector, None, kind, 0)
        assert (info.value.vector, info.value.error_code) == expected
    cpu.idtr_limit = 8 * 0x40 - 1
    with pytest.raises(GuestFault) as info:
        deliver(cpu, mmu, 0x40, None, KIND_EXTERNAL, 0)
    assert (info.value.vector, info.value.error_code) == (GP, 0x40 * 8 + 3)


def test_long_mode_ist_alignment_and_ss_rsp_frame():
    mem, cpu, mmu = machine(long_mode=True, cpl=3)
    assert cpu.mode == MODE_LONG
    cpu.regs[RSP] = 0x7FF8
    mem.write_u64(IDT + 16 * PF, gate(K_CODE64, 0x4000, 0x8E, ist=2))
    deliver_fault(cpu, mmu, GuestFault(PF, 0x7, 0xDEAD000), 0x401000)
    assert cpu.cr2 == 0xDEAD000
    assert (cpu.cpl, cpu.segs[SS].selector, cpu.segs[CS].selector, cpu.rip) == (0, 0, K_CODE64, 0x4000)
    assert cpu.regs[RSP] == 0xA000 - 48                           # IST2 aligned down to 16
    frame = stack(mem, 0xA000 - 48, 6, 8)
    assert frame[:3] + frame[4:] == [0x7, 0x401000, U_CODE64, 0x7FF8, U_DATA]
    assert frame[3] & RFLAGS_RF
    cpu.regs[RSP] += 8  # the handler pops the error code
    segments.interrupt_return(cpu, mmu, 8)
    assert (cpu.cpl, cpu.mode, cpu.rip, cpu.regs[RSP], cpu.segs[SS].selector) == (3, MODE_LONG, 0x401000, 0x7FF8,
                                                                                 U_DATA)


def test_long_mode_same_ring_pushes_ss_rsp_and_aligns():
    mem, cpu, mmu = machine(long_mode=True)
    cpu.regs[RSP] = 0x8008
    mem.write_u64(IDT + 16 * 0x20, gate(K_CODE64, 0x4000, 0x8E))
    deliver(cpu, mmu, 0x20, None, KIND_EXTERNAL, 0x1111)
    assert cpu.regs[RSP] == 0x8000 - 40
    frame = stack(mem, 0x8000 - 40, 5, 8)
    assert frame[:2] + frame[3:] == [0x1111, K_CODE64, 0x8008, K_DATA]
    # 16-bit gates do not exist in IA-32e mode.
    mem.write_u64(IDT + 16 * 0x21, gate(K_CODE64, 0x4000, 0x86))
    with pytest.raises(GuestFault) as info:
        deliver(cpu, mmu, 0x21, None, KIND_EXTERNAL, 0)
    assert info.value.error_code == 0x21 * 8 + 3


def test_v86_interrupt_saves_and_nulls_data_segments():
    mem, cpu, mmu = machine()
    mem.write_u64(IDT + 8 * 0x0D, gate(K_CODE, 0x4000, 0x8E))
    cpu.rflags |= RFLAGS_VM | RFLAGS_IOPL
    for s, sel in ((ES, 0x100), (DS, 0x200), (FS, 0x300), (GS, 0x400), (SS, 0x500)):
        segments.load_segment(cpu, mmu, s, sel)
    cpu.segs[CS].selector = 0x600
    cpu.refresh_mode()
    assert cpu.mode == MODE_V86 and cpu.cpl == 3
    cpu.regs[RSP] = 0x0FF0
    deliver_fault(cpu, mmu, GuestFault(GP, 0), 0x12)
    assert cpu.mode == MODE_PROTECTED and cpu.cpl == 0
    frame = stack(mem, cpu.regs[RSP], 10, 4)
    assert frame[:3] + frame[4:] == [0, 0x12, 0x600, 0x0FF0, 0x500, 0x100, 0x200, 0x300, 0x400]
    assert frame[3] & RFLAGS_VM
    assert all(not cpu.segs[s].present and cpu.segs[s].selector == 0 for s in (ES, DS, FS, GS))
    # And back: IRETD with VM=1 in the image (the handler dropped the error code).
    cpu.regs[RSP] += 4
    segments.interrupt_return(cpu, mmu, 4)
    assert cpu.mode == MODE_V86 and (cpu.segs[DS].base, cpu.regs[RSP], cpu.rip) == (0x2000, 0x0FF0, 0x12)


def test_v86_int_n_needs_iopl_3():
    mem, cpu, mmu = machine()
    cpu.rflags |= RFLAGS_VM
    cpu.refresh_mode()
    with pytest.raises(GuestFault) as info:
        deliver(cpu, mmu, 0x21, None, KIND_SOFTWARE, 0)
    assert (info.value.vector, info.value.error_code) == (GP, 0)


def test_contributory_during_page_fault_becomes_double_fault():
    mem, cpu, mmu = machine()
    mem.write_u64(IDT + 8 * PF, gate(K_CODE, 0x4000, 0x0E))      # #PF gate not present -> #NP
    mem.write_u64(IDT + 8 * DF, gate(K_CODE, 0x6000, 0x8E))
    deliver_fault(cpu, mmu, GuestFault(PF, 2, 0x1000), 0x99)
    assert (cpu.rip, cpu.cr2) == (0x6000, 0x1000)
    assert stack(mem, cpu.regs[RSP], 2, 4) == [0, 0x99]


def test_benign_then_contributory_is_serial():
    mem, cpu, mmu = machine()
    mem.write_u64(IDT + 8 * 6, gate(K_CODE, 0x4000, 0x0E))       # #UD gate not present -> #NP, serially
    mem.write_u64(IDT + 8 * NP, gate(K_CODE, 0x5000, 0x8E))
    deliver_fault(cpu, mmu, GuestFault(6), 0x99)
    assert cpu.rip == 0x5000
    assert stack(mem, cpu.regs[RSP], 2, 4) == [6 * 8 + 3, 0x99]


def test_fault_while_delivering_double_fault_is_a_triple_fault():
    mem, cpu, mmu = machine()
    cpu.idtr_limit = 0x7       # only vector 0 fits
    state = (cpu.rip, cpu.regs[RSP], cpu.segs[CS].selector)
    with pytest.raises(TripleFault):
        deliver_fault(cpu, mmu, GuestFault(GP, 0), 0x99)
    assert (cpu.rip, cpu.regs[RSP], cpu.segs[CS].selector) == state


def test_exception_kind_constants():
    assert KIND_EXCEPTION == 0 and interrupts.KIND_NMI == 3


def test_16bit_interrupt_gate_pushes_words():
    mem, cpu, mmu = machine()
    mem.write_u64(IDT + 8 * 0x22, gate(K_CODE, 0x12345, 0x86))   # 16-bit interrupt gate: offset is 16 bits
    flags = cpu.rflags
    deliver(cpu, mmu, 0x22, None, KIND_EXTERNAL, 0xABCD)
    assert (cpu.rip, cpu.regs[RSP]) == (0x2345, 0x8000 - 6)
    assert stack(mem, 0x8000 - 6, 3, 2) == [0xABCD, K_CODE, flags & 0xFFFF]
    segments.interrupt_return(cpu, mmu, 2)
    assert (cpu.rip, cpu.regs[RSP], cpu.rflags) == (0xABCD, 0x8000, flags)


def test_64bit_call_gate_to_ring0_and_retf_back():
    mem, cpu, mmu = machine(long_mode=True, cpl=3)
    gate_sel = 0x48
    mem.write_u64(GDT + gate_sel, gate(K_CODE64, 0x5000, 0xEC))   # 64-bit call gate, DPL 3
    mem.write_u64(GDT + gate_sel + 8, 0)                            # upper half: offset 63:32, type 0
    cpu.regs[RSP] = 0x7FF8
    segments.far_call(cpu, mmu, gate_sel | 3, 0, 8, 0x401234)
    assert (cpu.cpl, cpu.rip, cpu.segs[SS].selector, cpu.regs[RSP]) == (0, 0x5000, 0, 0x9000 - 32)
    assert stack(mem, 0x9000 - 32, 4, 8) == [0x401234, U_CODE64, 0x7FF8, U_DATA]
    segments.far_return(cpu, mmu, 8, 0)
    assert (cpu.cpl, cpu.rip, cpu.regs[RSP], cpu.segs[SS].selector) == (3, 0x401234, 0x7FF8, U_DATA)
    # A 32-bit gate type in the upper half is rejected.
    mem.write_u64(GDT + gate_sel + 8, 0xC << 40)
    with pytest.raises(GuestFault) as info:
        segments.far_call(cpu, mmu, gate_sel | 3, 0, 8, 0)
    assert (info.value.vector, info.value.error_code) == (GP, gate_sel)
