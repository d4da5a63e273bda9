"""MMX (SDM Vol. 1 ch. 9) and the SSE/SSE2 instructions on mm registers (PSHUFW, PAVGB, PADDQ ...).

The eight 64-bit mm registers alias the x87 data registers: mm<i> is the
significand (bits 0-63) of physical register R<i> in `FpuState.st`, and
writing it sets the exponent/sign bits 64-79 to ones (SDM Vol. 1 9.5.1).
Every MMX instruction but EMMS leaves TOP = 0 and all registers tagged
valid, so mm<i> is then ST(i) and FXSAVE stores it in the ST<i>/MM<i> slot;
EMMS tags every register empty. The lane arithmetic is sse.py's at 64-bit
width (`packed_int_ops(64)`). CR0.EM is #UD, CR0.TS #NM (SDM Vol. 3
Table 12-1); like the x87 instructions (x87.py), MMX instructions raise no
#MF for a pending x87 exception.
"""

from __future__ import annotations

from xvm.arch.x86.regs import CR0_EM, CR0_TS
from xvm.engines.bt.faults import NM, GuestFault
from xvm.engines.bt.ops.common import handles, read_E, read_mem, set_reg, ud, write_E, write_mem
from xvm.engines.bt.ops.sse import (
    insert_word,
    join,
    masked_store,
    packed_int_ops,
    shuffle4,
    sign_mask,
    split,
    sse_check,
)
from xvm.engines.bt.ops.x87 import TOP_MASK, FpuState, fpu

M64 = (1 << 64) - 1
_MM_HIGH = b"\xff\xff"  # bits 64-79 of a register an MMX instruction wrote


def mmx_check(cpu) -> FpuState:
    """The faults every MMX instruction checks first: CR0.EM -> #UD, CR0.TS -> #NM."""
    if cpu.cr0 & CR0_EM:
        raise ud()
    if cpu.cr0 & CR0_TS:
        raise GuestFault(NM)
    return fpu(cpu)


def mmx_done(st: FpuState) -> None:
    """The x87 state an MMX instruction leaves: TOP = 0, every register valid (SDM Vol. 1 Table 9-2)."""
    st.fsw &= ~TOP_MASK
    st.ftw = 0xFF


def get_mm(st: FpuState, i: int) -> int:
    return int.from_bytes(st.st[i & 7][:8], "little")


def set_mm(st: FpuState, i: int, value: int) -> None:
    """Write mm<i> (REX.R/B do not extend mm register numbers) and finish the instruction."""
    st.st[i & 7] = (value & M64).to_bytes(8, "little") + _MM_HIGH
    mmx_done(st)


def _read_Q(cpu, mmu, ins, st: FpuState) -> int:
    """The mm register ModRM.rm names, or the 64-bit memory operand (no alignment required)."""
    return read_mem(cpu, mmu, ins, 8) if ins.is_mem else get_mm(st, ins.rm)


def _store_Q(cpu, mmu, ins, st: FpuState, value: int) -> None:
    if ins.is_mem:
        write_mem(cpu, mmu, ins, 8, value)
        mmx_done(st)
    else:
        set_mm(st, ins.rm, value)


# --- moves ---------------------------------------------------------------------------


@handles("movd_Pq_Ey")
def movd_Pq_Ey(cpu, mmu, ins, io):
    """MOVD mm, r/m32 zero-extends; with REX.W it is MOVQ mm, r/m64."""
    st = mmx_check(cpu)
    set_mm(st, ins.reg, read_E(cpu, mmu, ins, 8 if ins.rex & 8 else 4))


@handles("movd_Ey_Pq")
def movd_Ey_Pq(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    size = 8 if ins.rex & 8 else 4
    write_E(cpu, mmu, ins, size, get_mm(st, ins.reg) & ((1 << (size * 8)) - 1))
    mmx_done(st)


@handles("movq_Pq_Qq")
def movq_Pq_Qq(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    set_mm(st, ins.reg, _read_Q(cpu, mmu, ins, st))


@handles("movq_Qq_Pq", "movntq_Mq_Pq")
def movq_Qq_Pq(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    _store_Q(cpu, mmu, ins, st, get_mm(st, ins.reg))


@handles("movdq2q_Pq_Ux")
def movdq2q_Pq_Ux(cpu, mmu, ins, io):
    sse_check(cpu)
    set_mm(mmx_check(cpu), ins.reg, cpu.xmm[ins.rm] & M64)


@handles("movq2dq_Vx_Nq")
def movq2dq_Vx_Nq(cpu, mmu, ins, io):
    sse_check(cpu)
    st = mmx_check(cpu)
    cpu.xmm[ins.reg] = get_mm(st, ins.rm)
    mmx_done(st)


@handles("emms")
def emms(cpu, mmu, ins, io):
    """Tag every x87 register empty, so x87 code can follow MMX code (SDM Vol. 1 9.6.3)."""
    mmx_check(cpu).ftw = 0


@handles("maskmovq_BDq_Pq_Nq")
def maskmovq(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    masked_store(cpu, mmu, ins, get_mm(st, ins.reg), get_mm(st, ins.rm), 8)
    mmx_done(st)


# --- packed integer ----------------------------------------------------------------


def _packed(fn):
    def h(cpu, mmu, ins, io):
        st = mmx_check(cpu)
        set_mm(st, ins.reg, fn(get_mm(st, ins.reg), _read_Q(cpu, mmu, ins, st)))

    return h


def _shift_imm(fn):
    def h(cpu, mmu, ins, io):
        st = mmx_check(cpu)
        set_mm(st, ins.rm, fn(get_mm(st, ins.rm), ins.imm))

    return h


MMX_INT = packed_int_ops(64)
for _name, _fn in MMX_INT.items():
    handles(f"{_name}_Pq_Qq")(_packed(_fn))
for _name in ("psrlw", "psraw", "psllw", "psrld", "psrad", "pslld", "psrlq", "psllq"):
    handles(f"{_name}_Nq_Ib")(_shift_imm(MMX_INT[_name]))


@handles("pshufw_Pq_Qq_Ib")
def pshufw(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    set_mm(st, ins.reg, join(shuffle4(split(_read_Q(cpu, mmu, ins, st), 16, 64), ins.imm), 16))


@handles("pextrw_Gy_Nq_Ib")
def pextrw(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    set_reg(cpu, ins.reg, 4, (get_mm(st, ins.rm) >> (16 * (ins.imm & 3))) & 0xFFFF)
    mmx_done(st)


@handles("pinsrw_Pq_Ew_Ib")
def pinsrw(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    set_mm(st, ins.reg, insert_word(get_mm(st, ins.reg), read_E(cpu, mmu, ins, 2), ins.imm & 3))


@handles("pmovmskb_Gy_Nq")
def pmovmskb(cpu, mmu, ins, io):
    st = mmx_check(cpu)
    set_reg(cpu, ins.reg, 4, sign_mask(get_mm(st, ins.rm), 8, 64))
    mmx_done(st)
