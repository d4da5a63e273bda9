"""System instructions, trapped and emulated with the SDM's privilege checks.

Ring deprivileging: nothing sensitive runs blindly. Each handler checks the
mode, CPL and IOPL the SDM names (Vol. 2 instruction pages, Vol. 3 2.8 and
5.9) and raises #GP(0) or #UD as hardware would, then emulates the effect
on CpuState, telling the soft MMU when paging-relevant state changed.

CPUID advertises exactly the feature bits the engine implements (leaves in
`CPUID_LEAVES`); RDMSR/WRMSR know the MSRs in `_MSR_DEFAULTS` plus the
ones with side effects below and raise #GP(0) for any other index. The time
stamp counter is virtual: one tick per retired instruction (a 1 GHz clock
matching clock.NS_PER_INSTRUCTION) plus an offset that WRMSR TSC and the run
loop (`advance_tsc`, for idle time skipped by HLT) adjust.
"""

from __future__ import annotations

from xvm.arch.x86.cpuid import EBX_APIC_ID_SHIFT
from xvm.arch.x86.regs import (
    CR0_CD,
    CR0_EM,
    CR0_ET,
    CR0_MP,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR4_DE,
    CR4_PAE,
    CR4_TSD,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
)
from xvm.engines.bt import segments
from xvm.engines.bt.faults import UD, GuestFault
from xvm.engines.bt.ops.common import (
    IF,
    MASK,
    ZF,
    ea,
    gp0,
    handles,
    iopl,
    read_E,
    seg_linear,
    set_reg,
    ud,
    write_E,
)
from xvm.engines.bt.state import CS, GS, MODE_LONG, MODE_REAL, MODE_V86, SS, SegmentCache

RAX, RCX, RDX, RBX, RSP = 0, 1, 2, 3, 4
R11 = 11

# MSR indices (SDM Vol. 4 Table 2-2).
IA32_TSC = 0x10
IA32_APIC_BASE = 0x1B
IA32_UCODE_REV = 0x8B
IA32_MTRRCAP = 0xFE
IA32_SYSENTER_CS = 0x174
IA32_SYSENTER_ESP = 0x175
IA32_SYSENTER_EIP = 0x176
IA32_MISC_ENABLE = 0x1A0
IA32_PAT = 0x277
IA32_MTRR_DEF_TYPE = 0x2FF
IA32_EFER = 0xC0000080
IA32_STAR = 0xC0000081
IA32_LSTAR = 0xC0000082
IA32_CSTAR = 0xC0000083
IA32_FMASK = 0xC0000084
IA32_FS_BASE = 0xC0000100
IA32_GS_BASE = 0xC0000101
IA32_KERNEL_GS_BASE = 0xC0000102
IA32_TSC_AUX = 0xC0000103
#: MTRR variable-range base/mask pairs and the fixed-range registers.
_MTRR_MSRS = tuple(range(0x200, 0x210)) + (0x250, 0x258, 0x259) + tuple(range(0x268, 0x270))
#: Readable and writable MSRs with no side effect, and their reset values.
_MSR_DEFAULTS = {
    IA32_UCODE_REV: 0,
    IA32_MTRRCAP: 0x508,  # 8 variable ranges, fixed ranges, write-combining
    IA32_SYSENTER_CS: 0,
    IA32_SYSENTER_ESP: 0,
    IA32_SYSENTER_EIP: 0,
    IA32_MISC_ENABLE: 1,  # fast strings
    IA32_PAT: 0x0007040600070406,
    IA32_MTRR_DEF_TYPE: 0,
    IA32_STAR: 0,
    IA32_LSTAR: 0,
    IA32_CSTAR: 0,
    IA32_FMASK: 0,
    IA32_KERNEL_GS_BASE: 0,
    IA32_TSC_AUX: 0,
}
_MSR_DEFAULTS.update((m, 0) for m in _MTRR_MSRS)
#: IA32_APIC_BASE (SDM Vol. 3 11.4.4): base 0xFEE00000, global enable, BSP flag; reserved are bits 0-7,
#: bit 9, bit 10 (x2APIC enable: x2APIC is not advertised) and those above MAXPHYADDR (40).
_APIC_BASE_RESET = 0xFEE00000 | (1 << 11)
_APIC_BASE_BSP = 1 << 8
_APIC_BASE_RESERVED = (MASK[8] & ~((1 << 40) - 1)) | 0x6FF
#: Key in cpu.msrs under which the TSC offset is kept.
TSC_OFFSET = IA32_TSC

_EFER_WRITABLE = EFER_SCE | EFER_LME | EFER_NXE
_CR4_SUPPORTED = 0x6BC  # TSD DE PSE PAE PGE OSFXSR OSXMMEXCPT: the CR4 features CPUID advertises

# CPUID (SDM Vol. 2 CPUID). Leaf 1 EDX: FPU DE PSE TSC MSR PAE CX8 APIC SEP MTRR PGE CMOV PAT CLFSH MMX FXSR
# SSE SSE2; ECX: CX16. Extended: SYSCALL NX RDTSCP LM, LAHF/SAHF in 64-bit mode. Left out because they are not
# implemented: VME, MCE/MCA, PSE-36, SSE3 and later, XSAVE, x2APIC, PCID. The FPU (x86-64 Linux requires
# it, REQUIRED_MASK0) is there without transcendentals and at double precision (ops/x87.py); MMX (ops/mmx.py)
# because glibc's x86-64 baseline ISA level requires it of every dynamically linked program.
# The vendor is Intel's, as Bochs and v86 report it: Linux and glibc read the feature leaves through
# vendor-specific code only for vendors they know. With a vendor of its own, glibc 2.36 never reads leaf 1
# (no baseline ISA: every dynamically linked program refuses to start) and Linux never marks the TSC
# constant. Family 6 model 15 (Core 2) leaves the maximum basic leaf at 1, so no leaf 2/4 cache data is
# expected; the brand string still says what this CPU is.
CPUID_VENDOR = b"GenuineIntel"
_LEAF1_EDX = ((1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 9) | (1 << 11)
              | (1 << 12) | (1 << 13) | (1 << 15) | (1 << 16) | (1 << 19) | (1 << 23) | (1 << 24) | (1 << 25)
              | (1 << 26))
_LEAF1_ECX = 1 << 13
_EXT1_EDX = (1 << 11) | (1 << 20) | (1 << 27) | (1 << 29)
_EXT1_ECX = 1 << 0
_BRAND = b"xvm bt virtual CPU".ljust(48, b"\0")


def _regs4(data: bytes) -> tuple[int, int, int, int]:
    return tuple(int.from_bytes(data[i:i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]


CPUID_LEAVES: dict[int, tuple[int, int, int, int]] = {
    0x0: (0x1, int.from_bytes(CPUID_VENDOR[0:4], "little"), int.from_bytes(CPUID_VENDOR[8:12], "little"),
          int.from_bytes(CPUID_VENDOR[4:8], "little")),
    # family 6 model 15 stepping 1; EBX: CLFLUSH line 8 qwords (the APIC ID is added per vCPU)
    0x1: (0x000006F1, 0x00000800, _LEAF1_ECX, _LEAF1_EDX),
    0x80000000: (0x80000008, 0, 0, 0),
    0x80000001: (0, 0, _EXT1_ECX, _EXT1_EDX),
    0x80000002: _regs4(_BRAND[0:16]),
    0x80000003: _regs4(_BRAND[16:32]),
    0x80000004: _regs4(_BRAND[32:48]),
    0x80000008: (0x3028, 0, 0, 0),  # 40 physical, 48 linear address bits
}
#: Registers are (EAX, EBX, ECX, EDX) in CPUID_LEAVES; leaf 0 lists EBX, EDX, ECX = the vendor string.


def _require_cpl0(cpu) -> None:
    if cpu.cpl != 0:
        raise gp0()


def _require_protected(cpu) -> None:
    """LLDT, LTR, SLDT, STR, LAR, LSL, VERR, VERW, ARPL are #UD in real and virtual-8086 mode."""
    if cpu.mode == MODE_REAL or cpu.mode == MODE_V86:
        raise ud()


def read_tsc(cpu) -> int:
    return (cpu.icount + cpu.msrs.get(TSC_OFFSET, 0)) & MASK[8]


def advance_tsc(cpu, ticks: int) -> None:
    """Let the TSC count `ticks` more (the run loop skipped idle time)."""
    cpu.msrs[TSC_OFFSET] = cpu.msrs.get(TSC_OFFSET, 0) + ticks


@handles("hlt")
def hlt(cpu, mmu, ins, io):
    _require_cpl0(cpu)
    cpu.halted = True


@handles("cli", "sti")
def cli(cpu, mmu, ins, io):
    """IF changes need CPL <= IOPL (and IOPL 3 in virtual-8086 mode); no VME/PVI."""
    if cpu.mode != MODE_REAL and iopl(cpu) < (3 if cpu.mode == MODE_V86 else cpu.cpl):
        raise gp0()
    if ins.op.mnemonic == "cli":
        cpu.rflags &= ~IF
    elif not cpu.rflags & IF:
        cpu.rflags |= IF
        cpu.interrupt_shadow = True  # interrupts wait one more instruction (SDM Vol. 2 STI)


@handles("cpuid")
def cpuid(cpu, mmu, ins, io):
    leaf = cpu.regs[RAX] & 0xFFFFFFFF
    if leaf not in CPUID_LEAVES:
        # Out-of-range leaves return the highest basic leaf's data (SDM Vol. 2 CPUID); zeros otherwise.
        leaf = 0x1 if leaf < 0x80000000 or leaf > 0x80000008 else -1
    a, b, c, d = CPUID_LEAVES.get(leaf, (0, 0, 0, 0))
    if leaf == 0x1:
        b |= (cpu.apic_id & 0xFF) << EBX_APIC_ID_SHIFT  # initial APIC ID: Linux numbers the CPUs by it
    for r, v in ((RAX, a), (RBX, b), (RCX, c), (RDX, d)):
        cpu.regs[r] = v


@handles("rdtsc", "rdtscp")
def rdtsc(cpu, mmu, ins, io):
    if cpu.cr4 & CR4_TSD and cpu.cpl != 0:
        raise gp0()
    tsc = read_tsc(cpu)
    cpu.regs[RAX] = tsc & 0xFFFFFFFF
    cpu.regs[RDX] = tsc >> 32
    if ins.op.mnemonic == "rdtscp":
        cpu.regs[RCX] = cpu.msrs.get(IA32_TSC_AUX, 0) & 0xFFFFFFFF


def _canonical(value: int) -> bool:
    top = value >> 47
    return top == 0 or top == 0x1FFFF


@handles("rdmsr")
def rdmsr(cpu, mmu, ins, io):
    _require_cpl0(cpu)
    index = cpu.regs[RCX] & 0xFFFFFFFF
    if index == IA32_EFER:
        value = cpu.efer
    elif index == IA32_TSC:
        value = read_tsc(cpu)
    elif index == IA32_FS_BASE:
        value = cpu.segs[4].base
    elif index == IA32_GS_BASE:
        value = cpu.segs[GS].base
    elif index == IA32_APIC_BASE:
        if cpu.apic_base_msr is not None:
            value = cpu.apic_base_msr.read()
        else:
            value = cpu.msrs.get(index, _APIC_BASE_RESET | (_APIC_BASE_BSP if cpu.apic_id == 0 else 0))
    elif index in _MSR_DEFAULTS:
        value = cpu.msrs.get(index, _MSR_DEFAULTS[index])
    else:
        raise gp0()
    cpu.regs[RAX] = value & 0xFFFFFFFF
    cpu.regs[RDX] = (value >> 32) & 0xFFFFFFFF


@handles("wrmsr")
def wrmsr(cpu, mmu, ins, io):
    _require_cpl0(cpu)
    index = cpu.regs[RCX] & 0xFFFFFFFF
    value = ((cpu.regs[RDX] & 0xFFFFFFFF) << 32) | (cpu.regs[RAX] & 0xFFFFFFFF)
    if index == IA32_EFER:
        if value & ~(_EFER_WRITABLE | EFER_LMA):
            raise gp0()
        if (value ^ cpu.efer) & EFER_LME and cpu.cr0 & CR0_PG:
            raise gp0()  # LME cannot change while paging is on
        cpu.efer = (value & _EFER_WRITABLE) | (cpu.efer & EFER_LMA)
        mmu.mode_changed()
        cpu.refresh_mode()
    elif index == IA32_TSC:
        cpu.msrs[TSC_OFFSET] = value - cpu.icount
    elif index in (IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_CSTAR,
                   IA32_SYSENTER_ESP, IA32_SYSENTER_EIP):
        if not _canonical(value):
            raise gp0()
        if index == IA32_FS_BASE:
            cpu.segs[4].base = value
        elif index == IA32_GS_BASE:
            cpu.segs[GS].base = value
        else:
            cpu.msrs[index] = value
    elif index == IA32_PAT:
        if any(((value >> (8 * i)) & 0xFF) in (2, 3) or (value >> (8 * i)) & 0xF8 for i in range(8)):
            raise gp0()  # reserved memory types (SDM Vol. 3 11.12.2)
        cpu.msrs[index] = value
    elif index == IA32_APIC_BASE:
        if value & _APIC_BASE_RESERVED:
            raise gp0()
        if cpu.apic_base_msr is not None:
            cpu.apic_base_msr.write(value)  # the LAPIC model honours the enable bit
        else:
            cpu.msrs[index] = value
    elif index == IA32_UCODE_REV:
        pass  # Linux writes 0 before CPUID to read the microcode revision back: none is loaded, it stays 0
    elif index == IA32_MTRRCAP:
        raise gp0()  # read-only
    elif index in _MSR_DEFAULTS:
        cpu.msrs[index] = value
    else:
        raise gp0()


# --- control and debug registers -------------------------------------------------------

def write_cr0(cpu, mmu, value: int) -> None:
    """MOV CR0 / LMSW: consistency checks, long-mode activation (SDM Vol. 3 2.5, 9.8.5)."""
    if value >> 32:
        raise gp0()
    value |= CR0_ET
    if (value & CR0_PG and not value & CR0_PE) or (value & CR0_NW and not value & CR0_CD):
        raise gp0()
    efer = cpu.efer
    if value & CR0_PG and not cpu.cr0 & CR0_PG and efer & EFER_LME:
        if not cpu.cr4 & CR4_PAE:
            raise gp0()
        efer |= EFER_LMA
    elif not value & CR0_PG and cpu.cr0 & CR0_PG and efer & EFER_LMA:
        if cpu.mode == MODE_LONG:
            raise gp0()  # paging can be turned off only from compatibility mode
        efer &= ~EFER_LMA
    cpu.cr0 = value
    cpu.efer = efer
    mmu.mode_changed()
    cpu.refresh_mode()


def _write_cr(cpu, mmu, n: int, value: int) -> None:
    if n == 0:
        write_cr0(cpu, mmu, value)
    elif n == 2:
        cpu.cr2 = value
    elif n == 3:
        if cpu.mode == MODE_LONG and value >> 52:
            raise gp0()
        cpu.cr3 = value
        mmu.mode_changed()
    elif n == 4:
        if value & ~_CR4_SUPPORTED or (cpu.efer & EFER_LMA and not value & CR4_PAE):
            raise gp0()
        cpu.cr4 = value
        mmu.mode_changed()
    elif n == 8:
        if value >> 4:
            raise gp0()
        cpu.cr8 = value
    else:
        raise ud()


def _read_cr(cpu, n: int) -> int:
    if n == 0:
        return cpu.cr0
    if n == 2:
        return cpu.cr2
    if n == 3:
        return cpu.cr3
    if n == 4:
        return cpu.cr4
    if n == 8:
        return cpu.cr8
    raise ud()


def _cr_number(cpu, ins) -> int:
    """CR index from ModRM.reg (+REX.R); LOCK MOV CR0 is AMD's CR8 alias, which is not offered."""
    if ins.lock:
        raise ud()
    if ins.reg == 8 and cpu.mode != MODE_LONG:
        raise ud()
    return ins.reg


def _dr_number(cpu, ins) -> int:
    n = ins.reg
    if n > 7:
        raise ud()
    if n in (4, 5):
        if cpu.cr4 & CR4_DE:
            raise ud()
        n += 2  # DR4/DR5 alias DR6/DR7 without CR4.DE
    return n


def _mov_cr_size(cpu) -> int:
    return 8 if cpu.mode == MODE_LONG else 4


@handles("mov_Ry_Cy")
def mov_Ry_Cy(cpu, mmu, ins, io):
    n = _cr_number(cpu, ins)
    _require_cpl0_not_v86(cpu)
    set_reg(cpu, ins.rm, _mov_cr_size(cpu), _read_cr(cpu, n))


@handles("mov_Cy_Ry")
def mov_Cy_Ry(cpu, mmu, ins, io):
    n = _cr_number(cpu, ins)
    _require_cpl0_not_v86(cpu)
    _write_cr(cpu, mmu, n, cpu.regs[ins.rm] & MASK[_mov_cr_size(cpu)])


@handles("mov_Ry_Dy")
def mov_Ry_Dy(cpu, mmu, ins, io):
    n = _dr_number(cpu, ins)
    _require_cpl0_not_v86(cpu)
    set_reg(cpu, ins.rm, _mov_cr_size(cpu), cpu.dr[n])


@handles("mov_Dy_Ry")
def mov_Dy_Ry(cpu, mmu, ins, io):
    n = _dr_number(cpu, ins)
    _require_cpl0_not_v86(cpu)
    value = cpu.regs[ins.rm] & MASK[_mov_cr_size(cpu)]
    if n >= 6 and value >> 32:
        raise gp0()
    if n == 6:
        value = (value & 0x1E00F) | 0xFFFF0FF0
    elif n == 7:
        value = (value & 0xFFFF2BFF) | 0x400
    cpu.dr[n] = value


def _require_cpl0_not_v86(cpu) -> None:
    if cpu.mode == MODE_V86 or cpu.cpl != 0:
        raise gp0()


@handles("clts")
def clts(cpu, mmu, ins, io):
    _require_cpl0_not_v86(cpu)
    cpu.cr0 &= ~CR0_TS


@handles("smsw_Ew")
def smsw_Ew(cpu, mmu, ins, io):
    write_E(cpu, mmu, ins, 2 if ins.is_mem else ins.opsize, cpu.cr0 & MASK[2 if ins.is_mem else ins.opsize])


@handles("lmsw_Ew")
def lmsw_Ew(cpu, mmu, ins, io):
    """Loads PE, MP, EM, TS; cannot clear PE (SDM Vol. 2 LMSW)."""
    _require_cpl0_not_v86(cpu)
    msw = read_E(cpu, mmu, ins, 2) & 0xF
    write_cr0(cpu, mmu, (cpu.cr0 & ~0xE) | msw | (cpu.cr0 & CR0_PE))


@handles("invlpg_Mb")
def invlpg_Mb(cpu, mmu, ins, io):
    _require_cpl0_not_v86(cpu)
    off = ea(cpu, ins)
    base = cpu.segs[ins.seg].base if cpu.mode != MODE_LONG or ins.seg >= 4 else 0
    mmu.invlpg((base + off) & MASK[8 if cpu.mode == MODE_LONG else 4])


@handles("wbinvd", "invd")
def wbinvd(cpu, mmu, ins, io):
    """No caches to write back or drop; the privilege check remains."""
    _require_cpl0_not_v86(cpu)


@handles("ud2", "ud1_Gv_Ev", "ud0_Gv_Ev")
def ud2(cpu, mmu, ins, io):
    """The defined-undefined opcodes (Linux's BUG() and WARN() traps)."""
    raise GuestFault(UD)


# --- descriptor tables and system segments -----------------------------------------

def _pseudo_descriptor(cpu, mmu, ins, write: bool) -> tuple[int, int]:
    """(linear of the 2-byte limit, size of the base field)."""
    base_size = 8 if cpu.mode == MODE_LONG else 4
    off = ea(cpu, ins)
    lin = seg_linear(cpu, ins.seg, off, 2 + base_size, write)
    return lin, base_size


@handles("lgdt_Ms", "lidt_Ms")
def lgdt_Ms(cpu, mmu, ins, io):
    _require_cpl0_not_v86(cpu)
    lin, base_size = _pseudo_descriptor(cpu, mmu, ins, False)
    user = False
    limit = mmu.read(lin, 2, user)
    base = mmu.read(lin + 2, base_size, user)
    if base_size == 4 and ins.opsize == 2:
        base &= 0xFFFFFF  # 16-bit operand size loads a 24-bit base
    if base_size == 8 and not _canonical(base):
        raise gp0()
    if ins.op.mnemonic == "lgdt":
        cpu.gdtr_base, cpu.gdtr_limit = base, limit
    else:
        cpu.idtr_base, cpu.idtr_limit = base, limit


@handles("sgdt_Ms", "sidt_Ms")
def sgdt_Ms(cpu, mmu, ins, io):
    lin, base_size = _pseudo_descriptor(cpu, mmu, ins, True)
    if ins.op.mnemonic == "sgdt":
        base, limit = cpu.gdtr_base, cpu.gdtr_limit
    else:
        base, limit = cpu.idtr_base, cpu.idtr_limit
    user = cpu.cpl == 3
    mmu.write(lin, 2, limit, user)
    mmu.write(lin + 2, base_size, base & MASK[base_size], user)


@handles("lldt_Ew", "ltr_Ew")
def lldt_Ew(cpu, mmu, ins, io):
    _require_protected(cpu)
    _require_cpl0(cpu)
    selector = read_E(cpu, mmu, ins, 2)
    if ins.op.mnemonic == "lldt":
        segments.load_ldtr(cpu, mmu, selector)
    else:
        segments.load_tr(cpu, mmu, selector)


@handles("sldt_Ew", "str_Ew")
def sldt_Ew(cpu, mmu, ins, io):
    _require_protected(cpu)
    selector = (cpu.ldtr if ins.op.mnemonic == "sldt" else cpu.tr).selector
    write_E(cpu, mmu, ins, 2 if ins.is_mem else ins.opsize, selector)


@handles("lar_Gv_Ew", "lsl_Gv_Ew")
def lar_Gv_Ew(cpu, mmu, ins, io):
    _require_protected(cpu)
    selector = read_E(cpu, mmu, ins, 2)
    fn = segments.lar if ins.op.mnemonic == "lar" else segments.lsl
    value = fn(cpu, mmu, selector)
    if value is None:
        cpu.rflags &= ~ZF
        return
    cpu.rflags |= ZF
    set_reg(cpu, ins.reg, ins.opsize, value)


@handles("verr_Ew", "verw_Ew")
def verr_Ew(cpu, mmu, ins, io):
    _require_protected(cpu)
    selector = read_E(cpu, mmu, ins, 2)
    fn = segments.verr if ins.op.mnemonic == "verr" else segments.verw
    if fn(cpu, mmu, selector):
        cpu.rflags |= ZF
    else:
        cpu.rflags &= ~ZF


@handles("arpl_Ew_Gw")
def arpl_Ew_Gw(cpu, mmu, ins, io):
    _require_protected(cpu)
    dest = read_E(cpu, mmu, ins, 2)
    src_rpl = cpu.regs[ins.reg] & 3
    if dest & 3 < src_rpl:
        write_E(cpu, mmu, ins, 2, (dest & ~3) | src_rpl)
        cpu.rflags |= ZF
    else:
        cpu.rflags &= ~ZF


# --- fast system calls -------------------------------------------------------------------

def _flat(selector: int, code: bool, dpl: int, long_code: bool = False) -> SegmentCache:
    """The fixed flat descriptors SYSCALL/SYSENTER load (SDM Vol. 2 SYSCALL, SYSENTER)."""
    access = 0x80 | (dpl << 5) | 0x10 | (0x0B if code else 0x03)
    flags = 0x8 | (0x2 if long_code else 0x4)
    return SegmentCache(selector, 0, 0xFFFFFFFF, access, flags)


@handles("swapgs")
def swapgs(cpu, mmu, ins, io):
    _require_cpl0(cpu)
    gs = cpu.segs[GS]
    kernel = cpu.msrs.get(IA32_KERNEL_GS_BASE, 0)
    cpu.msrs[IA32_KERNEL_GS_BASE] = gs.base
    gs.base = kernel


@handles("syscall")
def syscall(cpu, mmu, ins, io):
    if not cpu.efer & EFER_SCE or cpu.mode == MODE_REAL or cpu.mode == MODE_V86:
        raise ud()
    star = cpu.msrs.get(IA32_STAR, 0)
    sel = (star >> 32) & 0xFFFC
    if cpu.efer & EFER_LMA:
        cpu.regs[RCX] = cpu.rip
        cpu.regs[R11] = cpu.rflags & ~0x10000
        target = cpu.msrs.get(IA32_LSTAR if cpu.mode == MODE_LONG else IA32_CSTAR, 0)
        cpu.rflags = (cpu.rflags & ~cpu.msrs.get(IA32_FMASK, 0) & ~0x10000) | 2
        cpu.segs[CS] = _flat(sel, True, 0, long_code=True)
    else:
        cpu.regs[RCX] = cpu.rip & 0xFFFFFFFF
        target = star & 0xFFFFFFFF
        cpu.rflags &= ~(0x20000 | IF | 0x10000)
        cpu.segs[CS] = _flat(sel, True, 0)
    cpu.segs[SS] = _flat(sel + 8, False, 0)
    cpu.cpl = 0
    cpu.refresh_mode()
    cpu.rip = target


@handles("sysret")
def sysret(cpu, mmu, ins, io):
    if not cpu.efer & EFER_SCE or cpu.mode == MODE_REAL or cpu.mode == MODE_V86:
        raise ud()
    if cpu.cpl != 0:
        raise gp0()
    star = cpu.msrs.get(IA32_STAR, 0)
    sel = (star >> 48) & 0xFFFF
    if cpu.mode == MODE_LONG:
        if ins.opsize == 8:
            if not _canonical(cpu.regs[RCX]):
                raise gp0()
            cpu.segs[CS] = _flat((sel + 16) | 3, True, 3, long_code=True)
            target = cpu.regs[RCX]
        else:
            cpu.segs[CS] = _flat(sel | 3, True, 3)
            target = cpu.regs[RCX] & 0xFFFFFFFF
        cpu.rflags = (cpu.regs[R11] & 0x3C7FD7) | 2
    else:
        cpu.segs[CS] = _flat(sel | 3, True, 3)
        target = cpu.regs[RCX] & 0xFFFFFFFF
        cpu.rflags |= IF
    cpu.segs[SS] = _flat((sel + 8) | 3, False, 3)  # SDM SYSRET: SS gets fixed flat DPL-3 attributes
    cpu.cpl = 3
    cpu.refresh_mode()
    cpu.rip = target


@handles("sysenter")
def sysenter(cpu, mmu, ins, io):
    if cpu.mode == MODE_REAL:
        raise gp0()
    sel = cpu.msrs.get(IA32_SYSENTER_CS, 0) & 0xFFFC
    if sel == 0:
        raise gp0()
    long_mode = bool(cpu.efer & EFER_LMA)
    cpu.rflags &= ~(0x20000 | IF | 0x10000)
    cpu.segs[CS] = _flat(sel, True, 0, long_code=long_mode)
    cpu.segs[SS] = _flat(sel + 8, False, 0)
    cpu.cpl = 0
    cpu.refresh_mode()
    mask = MASK[8] if long_mode else MASK[4]
    cpu.regs[RSP] = cpu.msrs.get(IA32_SYSENTER_ESP, 0) & mask
    cpu.rip = cpu.msrs.get(IA32_SYSENTER_EIP, 0) & mask


@handles("sysexit")
def sysexit(cpu, mmu, ins, io):
    if cpu.mode == MODE_REAL or cpu.mode == MODE_V86:
        raise gp0()
    _require_cpl0(cpu)
    base = cpu.msrs.get(IA32_SYSENTER_CS, 0) & 0xFFFC
    if base == 0:
        raise gp0()
    if ins.opsize == 8:
        if not (_canonical(cpu.regs[RDX]) and _canonical(cpu.regs[RCX])):
            raise gp0()
        cpu.segs[CS] = _flat((base + 32) | 3, True, 3, long_code=True)
        cpu.segs[SS] = _flat((base + 40) | 3, False, 3)
        mask = MASK[8]
    else:
        cpu.segs[CS] = _flat((base + 16) | 3, True, 3)
        cpu.segs[SS] = _flat((base + 24) | 3, False, 3)
        mask = MASK[4]
    cpu.cpl = 3
    cpu.refresh_mode()
    cpu.regs[RSP] = cpu.regs[RCX] & mask
    cpu.rip = cpu.regs[RDX] & mask


# --- x87 control (no x87 arithmetic: see x87 rows in table.py) ----------------------------

def fpu_check(cpu) -> None:
    """#NM when CR0.EM or CR0.TS says the FPU belongs to someone else (SDM Vol. 3 2.5)."""
    if cpu.cr0 & (CR0_EM | CR0_TS):
        raise GuestFault(7)


@handles("wait")
def wait(cpu, mmu, ins, io):
    if cpu.cr0 & CR0_MP and cpu.cr0 & CR0_TS:
        raise GuestFault(7)
