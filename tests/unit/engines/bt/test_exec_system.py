"""System instructions: privilege checks (trap-and-emulate), MSRs, CPUID, control registers, fast calls, I/O."""

from __future__ import annotations

import pytest
from unit.engines.bt.test_exec_harness import CODE, PortLog, SparseMmu, fault_of, make_cpu, run_code

from xvm.arch.x86.regs import CR0_PE, CR0_PG, CR0_TS, CR4_PAE, EFER_LMA, EFER_LME, EFER_SCE
from xvm.engines.bt.faults import GP, NM, UD
from xvm.engines.bt.ops.system import CPUID_VENDOR, IA32_APIC_BASE, IA32_FMASK, IA32_LSTAR, IA32_STAR
from xvm.engines.bt.state import CS, MODE_LONG, SS, SegmentCache

RAX, RCX, RDX, RBX, RSP = 0, 1, 2, 3, 4

PRIVILEGED = {
    "hlt": "f4",
    "cli (IOPL 0)": "fa",
    "mov cr0, rax": "0f22c0",
    "mov rax, cr3": "0f20d8",
    "mov dr7, rax": "0f23f8",
    "wrmsr": "0f30",
    "rdmsr": "0f32",
    "lgdt [rax]": "0f0110",
    "lidt [rax]": "0f0118",
    "invlpg [rax]": "0f0138",
    "clts": "0f06",
    "wbinvd": "0f09",
    "lmsw ax": "0f01f0",
    "swapgs": "0f01f8",
    "in al, 0x60 (IOPL 0, no TSS bitmap)": "e460",
    "out dx, al (IOPL 0)": "ee",
    "insb": "6c",
}


@pytest.mark.parametrize("name", sorted(PRIVILEGED))
def test_privileged_instructions_fault_at_cpl3(name):
    cpu = make_cpu(64, cpl=3)
    mmu = SparseMmu()
    cpu.tr = SegmentCache(0x28, 0x3000, 0x67, 0x8B, 0)  # a TSS whose I/O map base lies beyond its limit
    mmu.write(0x3066, 2, 0x68, False)
    cpu.regs[RAX] = 0x5000
    before = (list(cpu.regs), cpu.rflags, cpu.cr0, cpu.cr3)
    fault = fault_of(cpu, mmu, bytes.fromhex(PRIVILEGED[name]))
    assert (fault.vector, fault.error_code) == (GP, 0)
    assert (list(cpu.regs), cpu.rflags, cpu.cr0, cpu.cr3) == before and cpu.rip == CODE


def test_iopl3_allows_cli_and_io_at_cpl3():
    cpu = make_cpu(32, cpl=3)
    cpu.rflags |= 3 << 12
    io = PortLog()
    run_code(cpu, SparseMmu(), bytes.fromhex("fa" "b041" "e680"), io)
    assert not cpu.rflags & 0x200 and io.writes == [(0x80, 1, 0x41)]


def _tss(cpu, mmu, denied_ports):
    """A 32-bit TSS at 0x3000 whose I/O bitmap (at offset 0x68) denies `denied_ports`."""
    bitmap = bytearray(8192 + 1)
    bitmap[-1] = 0xFF
    for port in denied_ports:
        bitmap[port >> 3] |= 1 << (port & 7)
    mmu.write(0x3000 + 0x66, 2, 0x68, False)
    mmu.write_bytes(0x3000 + 0x68, bytes(bitmap), False)
    cpu.tr = SegmentCache(0x28, 0x3000, 0x68 + len(bitmap) - 1, 0x8B, 0)


def test_tss_io_bitmap():
    cpu = make_cpu(32, cpl=3)
    mmu = SparseMmu()
    _tss(cpu, mmu, denied_ports=[0x61])
    io = PortLog()
    io.inputs[0x60] = 0x1C
    run_code(cpu, mmu, bytes.fromhex("e460"), io)  # in al, 60h: allowed
    assert cpu.regs[RAX] & 0xFF == 0x1C
    cpu.rip = CODE
    assert fault_of(cpu, mmu, bytes.fromhex("e461"), io).vector == GP
    cpu.rip = CODE
    assert fault_of(cpu, mmu, bytes.fromhex("66e560"), io).vector == GP  # word at 60h covers 61h


def test_cpuid_vendor_and_features():
    cpu = make_cpu(64)
    run_code(cpu, SparseMmu(), bytes.fromhex("31c00fa2"))  # xor eax,eax; cpuid
    vendor = b"".join(cpu.regs[r].to_bytes(4, "little") for r in (RBX, RDX, RCX))
    assert vendor == CPUID_VENDOR and cpu.regs[RAX] >= 1
    cpu.rip = CODE
    run_code(cpu, SparseMmu(), bytes.fromhex("b8010000000fa2"))  # cpuid 1
    baseline = (1 << 0) | (1 << 8) | (1 << 15) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)  # glibc's x86-64 ISA
    assert cpu.regs[RDX] & baseline == baseline  # FPU CX8 CMOV MMX FXSR SSE SSE2
    cpu.rip = CODE
    run_code(cpu, SparseMmu(), bytes.fromhex("b8010000800fa2"))  # cpuid 0x80000001
    assert cpu.regs[RDX] & (1 << 29) and cpu.regs[RDX] & (1 << 20)  # LM, NX
    assert not cpu.regs[RCX] & (1 << 5)  # no LZCNT: F3 0F BD stays BSR


def test_rdtsc_follows_retired_instructions():
    cpu = make_cpu(64)
    run_code(cpu, SparseMmu(), bytes.fromhex("0f31" "4889c3" "90" "90" "0f31"))
    assert cpu.regs[RAX] - cpu.regs[RBX] == 4


def test_msrs():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.write(0x123456 + 8, 8, 0xCAFE, False)
    # wrmsr FS_BASE = 0x123456; mov rax, fs:[8]
    run_code(cpu, mmu, bytes.fromhex("b9000100c0" "b856341200" "31d2" "0f30" "64488b042508000000"))
    assert cpu.regs[RAX] == 0xCAFE and cpu.segs[4].base == 0x123456
    cpu.rip = CODE
    cpu.regs[RCX] = 0x12345
    assert fault_of(cpu, mmu, bytes.fromhex("0f32")).vector == GP  # unknown MSR
    cpu.regs[RCX], cpu.regs[RAX], cpu.regs[RDX] = 0xC0000080, 1 << 3, 0
    assert fault_of(cpu, mmu, bytes.fromhex("0f30")).vector == GP  # reserved EFER bit


def test_microcode_revision_reads_back_zero_after_linuxs_write():
    """Linux on an Intel CPU: wrmsr(IA32_BIOS_SIGN_ID, 0); cpuid 1; rdmsr (the revision: none loaded)."""
    cpu = make_cpu(64)
    cpu.regs[RCX], cpu.regs[RAX], cpu.regs[RDX] = 0x8B, 0, 0
    run_code(cpu, SparseMmu(), bytes.fromhex("0f30" "b801000000" "0fa2" "b98b000000" "0f32"))
    assert (cpu.regs[RDX], cpu.regs[RAX]) == (0, 0)


def test_entering_long_mode():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    cpu.cr4 = CR4_PAE
    cpu.regs[RAX] = CR0_PE | CR0_PG | 0x10
    # wrmsr EFER.LME; mov cr0, eax
    cpu.regs[RCX], cpu.regs[RDX] = 0xC0000080, 0
    run_code(cpu, mmu, bytes.fromhex("50" "b800010000" "0f30" "58" "0f22c0"))
    assert cpu.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
    assert mmu.mode_changes >= 2
    cpu.rip = CODE
    cpu.cr4 = 0
    cpu.cr0 &= ~CR0_PG
    cpu.efer &= ~EFER_LMA
    assert fault_of(cpu, mmu, bytes.fromhex("0f22c0")).vector == GP  # LME + PG without PAE


def test_syscall_sysret_round_trip():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    cpu.efer |= EFER_SCE
    cpu.msrs[IA32_STAR] = (0x13 << 48) | (0x08 << 32)
    cpu.msrs[IA32_LSTAR] = 0x20000
    cpu.msrs[IA32_FMASK] = 0x200
    cpu.rflags |= 0x200
    mmu.write_bytes(0x20000, bytes.fromhex("480f07"), False)  # sysretq
    run_code(cpu, mmu, bytes.fromhex("0f05"))
    assert cpu.rip == 0x20000 and cpu.cpl == 0 and not cpu.rflags & 0x200
    assert cpu.regs[RCX] == CODE + 2 and cpu.segs[CS].selector == 0x08 and cpu.mode == MODE_LONG
    execute_one_more(cpu, mmu)
    assert cpu.rip == CODE + 2 and cpu.cpl == 3 and cpu.rflags & 0x200
    assert cpu.segs[CS].selector == 0x23 and cpu.segs[SS].selector == 0x1B and cpu.mode == MODE_LONG


def execute_one_more(cpu, mmu):
    from xvm.engines.bt.cpu import execute_one
    execute_one(cpu, mmu, PortLog())


def test_swapgs():
    cpu = make_cpu(64)
    cpu.segs[5].base = 0x1111
    cpu.msrs[0xC0000102] = 0x2222
    run_code(cpu, SparseMmu(), bytes.fromhex("0f01f8"))
    assert cpu.segs[5].base == 0x2222 and cpu.msrs[0xC0000102] == 0x1111


def test_lgdt_sgdt_64():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.write(0x5000, 2, 0x7F, False)
    mmu.write(0x5002, 8, 0xFFFF800000001000, False)
    cpu.regs[RAX], cpu.regs[RBX] = 0x5000, 0x6000
    run_code(cpu, mmu, bytes.fromhex("0f0110" "0f0103"))  # lgdt [rax]; sgdt [rbx]
    assert (cpu.gdtr_base, cpu.gdtr_limit) == (0xFFFF800000001000, 0x7F)
    assert mmu.read(0x6002, 8, False) == 0xFFFF800000001000


def test_control_register_checks():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    cpu.regs[RAX] = 1 << 22  # a CR4 bit this CPU does not implement
    assert fault_of(cpu, mmu, bytes.fromhex("0f22e0")).vector == GP
    assert fault_of(cpu, mmu, bytes.fromhex("0f22c8")).vector == UD  # CR1
    cpu.regs[RAX] = 0x5000
    run_code(cpu, mmu, bytes.fromhex("0f22d8" "0f0138"))  # mov cr3, rax; invlpg [rax]
    assert cpu.cr3 == 0x5000 and mmu.invalidated == [0x5000]


def test_sti_shadow_and_popf_at_cpl3():
    cpu = make_cpu(32)
    cpu.rflags &= ~0x200
    run_code(cpu, SparseMmu(), bytes.fromhex("fb"))
    assert cpu.rflags & 0x200 and cpu.interrupt_shadow
    cpu = make_cpu(32, cpl=3)
    mmu = SparseMmu()
    mmu.write(0x8000, 4, 0x3200 | 0x1, False)  # IOPL 3, IF, CF
    run_code(cpu, mmu, bytes.fromhex("9d"))  # popfd
    assert cpu.rflags & 1 and not cpu.rflags & 0x3200


def test_sse_needs_osfxsr_and_ts_is_nm():
    cpu = make_cpu(64)
    cpu.cr4 = 0x20
    assert fault_of(cpu, SparseMmu(), bytes.fromhex("660fefc0")).vector == UD
    cpu.cr4 |= 1 << 9
    cpu.cr0 |= CR0_TS
    assert fault_of(cpu, SparseMmu(), bytes.fromhex("660fefc0")).vector == NM


def test_real_mode_has_no_ltr():
    cpu = make_cpu(16)
    assert fault_of(cpu, SparseMmu(), bytes.fromhex("0f00d8")).vector == UD
    assert fault_of(cpu, SparseMmu(), bytes.fromhex("0f0b")).vector == UD  # ud2


def _v86(iopl: int):
    cpu = make_cpu(32)
    cpu.rflags |= 0x20000 | (iopl << 12)
    for i in range(6):
        cpu.segs[i] = SegmentCache(0, 0, 0xFFFF, 0xF3 if i != CS else 0xFB, 0)
    cpu.refresh_mode()
    cpu.rip = 0x1000
    return cpu


@pytest.mark.parametrize("code", ["fa", "fb", "9c", "9d", "cd21", "cf"])
def test_v86_iopl_sensitive_instructions(code):
    cpu = _v86(iopl=0)
    assert cpu.cpl == 3
    fault = fault_of(cpu, SparseMmu(), bytes.fromhex(code))
    assert (fault.vector, fault.error_code) == (GP, 0) and cpu.rip == 0x1000


def test_v86_with_iopl3_runs_cli_and_pushf():
    cpu = _v86(iopl=3)
    mmu = SparseMmu()
    cpu.regs[RSP] = 0x800
    run_code(cpu, mmu, bytes.fromhex("fa9c"))
    assert not cpu.rflags & 0x200 and cpu.regs[RSP] == 0x7FE
    assert mmu.read(0x7FE, 2, False) == cpu.rflags & 0xFFFF


def test_cpuid_leaf1_reports_the_apic_id():
    cpu = make_cpu(64)
    cpu.apic_id = 3
    run_code(cpu, SparseMmu(), bytes.fromhex("b8010000000fa2"))  # cpuid 1
    assert cpu.regs[RBX] >> 24 == 3
    assert not cpu.regs[RDX] & (1 << 1)  # no VME
    assert not cpu.regs[RCX] & ((1 << 21) | (1 << 24))  # no x2APIC, no TSC deadline


def _rdmsr_apic_base(cpu, mmu) -> int:
    cpu.rip = CODE
    cpu.regs[RCX] = IA32_APIC_BASE
    run_code(cpu, mmu, bytes.fromhex("0f32"))
    return (cpu.regs[RDX] << 32) | cpu.regs[RAX]


def test_apic_base_without_a_lapic_is_stored_and_only_the_bsp_has_the_bsp_flag():
    mmu = SparseMmu()
    bsp, ap = make_cpu(64), make_cpu(64)
    ap.apic_id = 1
    assert _rdmsr_apic_base(bsp, mmu) == 0xFEE00900
    assert _rdmsr_apic_base(ap, mmu) == 0xFEE00800
    ap.rip = CODE
    ap.regs[RCX], ap.regs[RAX], ap.regs[RDX] = IA32_APIC_BASE, 0xFEE00000, 0
    run_code(ap, mmu, bytes.fromhex("0f30"))
    assert _rdmsr_apic_base(ap, mmu) == 0xFEE00000


class FakeApicBase:
    def __init__(self) -> None:
        self.value = 0xFEE00900
        self.writes: list = []

    def read(self) -> int:
        return self.value

    def write(self, value: int) -> None:
        self.writes.append(value)


@pytest.mark.parametrize("reserved", [1 << 10, 1 << 9, 1, 1 << 40])
def test_apic_base_reaches_the_lapic_and_reserved_bits_fault(reserved):
    cpu = make_cpu(64)
    mmu = SparseMmu()
    cpu.apic_base_msr = lapic = FakeApicBase()
    lapic.value = 0xFEE00100
    assert _rdmsr_apic_base(cpu, mmu) == 0xFEE00100
    cpu.rip = CODE
    cpu.regs[RCX], cpu.regs[RAX], cpu.regs[RDX] = IA32_APIC_BASE, 0xFEE00100, 0
    run_code(cpu, mmu, bytes.fromhex("0f30"))
    assert lapic.writes == [0xFEE00100]
    cpu.rip = CODE
    value = 0xFEE00900 | reserved
    cpu.regs[RAX], cpu.regs[RDX] = value & 0xFFFFFFFF, value >> 32
    assert fault_of(cpu, mmu, bytes.fromhex("0f30")).vector == GP
    assert lapic.writes == [0xFEE00100]
