"""The PVM fallback's state conversion: kvm_regs/kvm_sregs/XSAVE image/MSRs <-> bt's CpuState and back."""

from __future__ import annotations

import struct

from xvm.arch.x86 import msr
from xvm.engines.bt.ops.system import read_tsc
from xvm.engines.bt.state import CS, FS, GS, MODE_LONG, MODE_PROTECTED, MODE_V86, SS
from xvm.engines.kvm import abi
from xvm.engines.kvm.convert import fpu_to_fxsave, regs_to_kvm, sregs_from_kvm, sregs_to_kvm
from xvm.engines.kvm.fallback import IA32_TSC, changed_msrs, cpu_state_from_kvm


def _long_mode_state():
    regs = abi.kvm_regs(rax=1, rcx=2, rdx=3, rbx=4, rsp=0xFFFF8000_00001000, rbp=6, rsi=7, rdi=8,
                        r8=9, r15=0x1515, rip=0xFFFFFFFF_81000000, rflags=0x246)
    sregs = abi.kvm_sregs(cr0=0x80050033, cr2=0x1234, cr3=0x9000, cr4=0x6A0, cr8=2, efer=0xD01,
                          apic_base=0xFEE00900)
    sregs.cs = abi.kvm_segment(selector=0x10, limit=0xFFFFFFFF, type=0xB, present=1, s=1, l=1, g=1)
    sregs.ss = abi.kvm_segment(selector=0x18, limit=0xFFFFFFFF, type=0x3, present=1, s=1, db=1, g=1)
    sregs.ds = abi.kvm_segment(unusable=1)
    sregs.es = abi.kvm_segment(unusable=1)
    sregs.fs = abi.kvm_segment(base=0x7F00_0000_0000, unusable=1)
    sregs.gs = abi.kvm_segment(base=0xFFFF8880_0F000000, unusable=1)
    sregs.tr = abi.kvm_segment(selector=0x40, base=0xFFFFFE00_00003000, limit=0x4087, type=0xB, present=1)
    sregs.ldt = abi.kvm_segment(unusable=1)
    sregs.gdt = abi.kvm_dtable(base=0xFFFFFE00_00001000, limit=0x7F)
    sregs.idt = abi.kvm_dtable(base=0xFFFFFE00_00000000, limit=0xFFF)
    sregs.interrupt_bitmap[0] = 1 << 5
    fpu = bytearray(4096)  # KVM_GET_XSAVE: FXSAVE image, then the XSAVE header
    struct.pack_into("<HHBxHQQII", fpu, 0, 0x37F, 0x3800, 0x80, 0x1E8, 0x1000, 0, 0x1FA0, 0xFFFF)
    fpu[32:42] = bytes.fromhex("0000000000000080ff3f")  # ST slot 0: 1.0 as an 80-bit real
    fpu[160 + 15 * 16:176 + 15 * 16] = bytes(range(16))  # XMM15
    fpu[416:432] = b"reserved-kept..."  # not modelled by bt: must survive
    fpu[512] = 3
    fpu = bytes(fpu)
    msrs = {IA32_TSC: 10**9, msr.MSR_LSTAR: 0xFFFFFFFF_81A00000, msr.MSR_KERNEL_GS_BASE: 0x7000, msr.MSR_STAR: 0}
    return regs, sregs, fpu, msrs


def test_long_mode_state_round_trips() -> None:
    regs, sregs, fpu, msrs = _long_mode_state()
    cpu = cpu_state_from_kvm(regs, sregs, fpu, msrs)
    assert cpu.mode == MODE_LONG and cpu.cpl == 0 and cpu.code_bits == 64
    assert cpu.segs[FS].base == 0x7F00_0000_0000 and cpu.segs[GS].base == 0xFFFF8880_0F000000
    assert cpu.msrs[msr.MSR_LSTAR] == 0xFFFFFFFF_81A00000 and read_tsc(cpu) == 10**9
    # FSW.TOP = 7: the ST0 slot is physical register 7, the one the tag word marks valid.
    assert cpu.fpu.st[7] == bytes.fromhex("0000000000000080ff3f") and cpu.xmm[15] == int.from_bytes(
        bytes(range(16)), "little")
    assert bytes(regs_to_kvm(cpu.get_regs())) == bytes(regs)
    back = abi.kvm_sregs.from_buffer_copy(sregs)
    sregs_to_kvm(cpu.get_sregs(), back)
    assert sregs_from_kvm(back) == sregs_from_kvm(sregs)
    assert back.interrupt_bitmap[0] == 1 << 5  # untouched: KVM's pending-interrupt state
    assert cpu.mxcsr == 0x1FA0 and cpu.fpu.fcw == 0x37F and cpu.fpu.ftw == 0x80 and cpu.fpu.fip == 0x1000
    assert fpu_to_fxsave(cpu, fpu) == fpu[:512]
    assert changed_msrs(cpu, msrs) == {}


def test_cpl_is_ss_dpl_and_v86_is_recognised() -> None:
    regs, sregs, fpu, msrs = _long_mode_state()
    sregs.cr0, sregs.efer = 0x11, 0
    sregs.cs = abi.kvm_segment(selector=0x1B, limit=0xFFFFFFFF, type=0xF, present=1, s=1, db=1, g=1, dpl=0)
    sregs.ss = abi.kvm_segment(selector=0x23, limit=0xFFFFFFFF, type=0x3, present=1, s=1, db=1, g=1, dpl=3)
    cpu = cpu_state_from_kvm(regs, sregs, fpu, msrs)
    assert cpu.mode == MODE_PROTECTED and cpu.cpl == 3  # conforming CS with DPL 0 at CPL 3
    regs.rflags = 0x20202
    cpu = cpu_state_from_kvm(regs, sregs, fpu, msrs)
    assert cpu.mode == MODE_V86 and cpu.cpl == 3 and cpu.segs[CS].selector == 0x1B and cpu.segs[SS].dpl == 3


def test_changed_msrs_names_writes_and_tsc_changes() -> None:
    regs, sregs, fpu, msrs = _long_mode_state()
    cpu = cpu_state_from_kvm(regs, sregs, fpu, msrs)
    cpu.msrs[msr.MSR_KERNEL_GS_BASE] = 0x8000  # SWAPGS
    cpu.icount += 1  # one instruction retired: not a TSC write
    assert changed_msrs(cpu, msrs) == {msr.MSR_KERNEL_GS_BASE: 0x8000}
    cpu.msrs[IA32_TSC] = 5 - cpu.icount  # WRMSR IA32_TSC, 5 (bt keeps the offset)
    assert changed_msrs(cpu, msrs)[IA32_TSC] == 5
