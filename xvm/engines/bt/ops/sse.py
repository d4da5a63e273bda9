"""x87 control state, FXSAVE/FXRSTOR, MXCSR and the SSE2 integer/move subset.

Only what a 64-bit Linux kernel and a static busybox execute: the kernel
initialises and saves FPU state (FNINIT, FLDCW, FXSAVE/FXRSTOR, LDMXCSR)
and libc string functions use 128-bit moves, PXOR, PCMPEQB, PMOVMSKB,
PMINUB, POR/PAND, PUNPCKLBW, PSHUFD. There is no x87 arithmetic: the data
registers are kept as opaque 80-bit values so FXSAVE/FXRSTOR round-trip
them. XMM registers are 128-bit ints in `cpu.xmm`; `cpu.fpu` holds an
`FpuState`. SSE instructions need CR4.OSFXSR (else #UD), CR0.EM clear (#UD)
and CR0.TS clear (#NM) (SDM Vol. 3 13.1).
"""

from __future__ import annotations

from xvm.arch.x86.regs import CR0_EM, CR0_TS, CR4_OSFXSR
from xvm.engines.bt.faults import NM, GuestFault
from xvm.engines.bt.ops.common import ea, gp0, handles, read_E, seg_linear, set_reg, ud, write_E
from xvm.engines.bt.ops.system import fpu_check
from xvm.engines.bt.state import MODE_LONG

MXCSR_MASK = 0xFFBF  # every MXCSR bit but DAZ is writable
M128 = (1 << 128) - 1


class FpuState:
    """x87 control/status/tag words and the eight data registers (80-bit, opaque)."""

    __slots__ = ("fcw", "fsw", "ftw", "fop", "fip", "fdp", "st")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """FNINIT state (SDM Vol. 1 8.1.10): FCW 037F, FSW 0, all registers empty."""
        self.fcw = 0x037F
        self.fsw = 0
        self.ftw = 0  # abridged tag: bit set = register valid
        self.fop = 0
        self.fip = 0
        self.fdp = 0
        self.st = [bytes(10)] * 8


def fpu(cpu) -> FpuState:
    state = cpu.fpu
    if state is None:
        state = cpu.fpu = FpuState()
    return state


def _sse_check(cpu) -> None:
    if cpu.cr0 & CR0_EM or not cpu.cr4 & CR4_OSFXSR:
        raise ud()
    if cpu.cr0 & CR0_TS:
        raise GuestFault(NM)


@handles("fninit")
def fninit(cpu, mmu, ins, io):
    fpu_check(cpu)
    fpu(cpu).reset()


@handles("fnclex")
def fnclex(cpu, mmu, ins, io):
    fpu_check(cpu)
    fpu(cpu).fsw &= 0x7F00


@handles("fnstcw_Mw")
def fnstcw_Mw(cpu, mmu, ins, io):
    fpu_check(cpu)
    write_E(cpu, mmu, ins, 2, fpu(cpu).fcw)


@handles("fldcw_Mw")
def fldcw_Mw(cpu, mmu, ins, io):
    fpu_check(cpu)
    fpu(cpu).fcw = read_E(cpu, mmu, ins, 2) | 0x40


@handles("fnstsw_Mw")
def fnstsw_Mw(cpu, mmu, ins, io):
    fpu_check(cpu)
    write_E(cpu, mmu, ins, 2, fpu(cpu).fsw)


@handles("fnstsw_AX")
def fnstsw_AX(cpu, mmu, ins, io):
    fpu_check(cpu)
    set_reg(cpu, 0, 2, fpu(cpu).fsw)


def _aligned_area(cpu, ins, size: int, write: bool) -> int:
    off = ea(cpu, ins)
    if off & 15:
        raise gp0()
    return seg_linear(cpu, ins.seg, off, size, write)


@handles("fxsave_M")
def fxsave_M(cpu, mmu, ins, io):
    """The 512-byte legacy FXSAVE image (SDM Vol. 1 Table 10-2; 64-bit layout with REX.W)."""
    fpu_check(cpu)
    lin = _aligned_area(cpu, ins, 512, True)
    st = fpu(cpu)
    image = bytearray(512)
    image[0:2] = st.fcw.to_bytes(2, "little")
    image[2:4] = st.fsw.to_bytes(2, "little")
    image[4] = st.ftw
    image[6:8] = st.fop.to_bytes(2, "little")
    image[8:16] = st.fip.to_bytes(8, "little")
    image[16:24] = st.fdp.to_bytes(8, "little")
    image[24:28] = cpu.mxcsr.to_bytes(4, "little")
    image[28:32] = MXCSR_MASK.to_bytes(4, "little")
    for i in range(8):
        image[32 + 16 * i:42 + 16 * i] = st.st[i]
    nxmm = 16 if cpu.mode == MODE_LONG else 8
    for i in range(nxmm):
        image[160 + 16 * i:176 + 16 * i] = cpu.xmm[i].to_bytes(16, "little")
    mmu.write_bytes(lin, bytes(image), cpu.cpl == 3)


@handles("fxrstor_M")
def fxrstor_M(cpu, mmu, ins, io):
    fpu_check(cpu)
    lin = _aligned_area(cpu, ins, 512, False)
    image = mmu.read_bytes(lin, 512, cpu.cpl == 3)
    mxcsr = int.from_bytes(image[24:28], "little")
    if mxcsr & ~MXCSR_MASK:
        raise gp0()
    st = fpu(cpu)
    st.fcw = int.from_bytes(image[0:2], "little")
    st.fsw = int.from_bytes(image[2:4], "little")
    st.ftw = image[4]
    st.fop = int.from_bytes(image[6:8], "little")
    st.fip = int.from_bytes(image[8:16], "little")
    st.fdp = int.from_bytes(image[16:24], "little")
    st.st = [bytes(image[32 + 16 * i:42 + 16 * i]) for i in range(8)]
    cpu.mxcsr = mxcsr
    nxmm = 16 if cpu.mode == MODE_LONG else 8
    for i in range(nxmm):
        cpu.xmm[i] = int.from_bytes(image[160 + 16 * i:176 + 16 * i], "little")


@handles("ldmxcsr_Md")
def ldmxcsr_Md(cpu, mmu, ins, io):
    _sse_check(cpu)
    value = read_E(cpu, mmu, ins, 4)
    if value & ~MXCSR_MASK:
        raise gp0()
    cpu.mxcsr = value


@handles("stmxcsr_Md")
def stmxcsr_Md(cpu, mmu, ins, io):
    _sse_check(cpu)
    write_E(cpu, mmu, ins, 4, cpu.mxcsr)


# --- SSE/SSE2 data movement and integer ops -----------------------------------------

def _read_W(cpu, mmu, ins, size: int, aligned: bool) -> int:
    """xmm register or `size`-byte memory operand (aligned: 16-byte alignment or #GP(0))."""
    if not ins.is_mem:
        return cpu.xmm[ins.rm] & ((1 << (size * 8)) - 1)
    off = ea(cpu, ins)
    if aligned and off & 15:
        raise gp0()
    lin = seg_linear(cpu, ins.seg, off, size, False)
    return int.from_bytes(mmu.read_bytes(lin, size, cpu.cpl == 3), "little")


def _write_W(cpu, mmu, ins, size: int, value: int, aligned: bool) -> None:
    if not ins.is_mem:
        cpu.xmm[ins.rm] = value & M128 if size == 16 else value
        return
    off = ea(cpu, ins)
    if aligned and off & 15:
        raise gp0()
    lin = seg_linear(cpu, ins.seg, off, size, True)
    mmu.write_bytes(lin, value.to_bytes(size, "little"), cpu.cpl == 3)


_ALIGNED = frozenset(("movaps", "movapd", "movdqa"))


@handles("movups_Vx_Wx", "movupd_Vx_Wx", "movaps_Vx_Wx", "movapd_Vx_Wx", "movdqa_Vx_Wx", "movdqu_Vx_Wx")
def mov_Vx_Wx(cpu, mmu, ins, io):
    _sse_check(cpu)
    cpu.xmm[ins.reg] = _read_W(cpu, mmu, ins, 16, ins.op.mnemonic in _ALIGNED)


@handles("movups_Wx_Vx", "movupd_Wx_Vx", "movaps_Wx_Vx", "movapd_Wx_Vx", "movdqa_Wx_Vx", "movdqu_Wx_Vx")
def mov_Wx_Vx(cpu, mmu, ins, io):
    _sse_check(cpu)
    _write_W(cpu, mmu, ins, 16, cpu.xmm[ins.reg], ins.op.mnemonic in _ALIGNED)


@handles("movd_Vx_Ey")
def movd_Vx_Ey(cpu, mmu, ins, io):
    _sse_check(cpu)
    cpu.xmm[ins.reg] = read_E(cpu, mmu, ins, 8 if ins.rex & 8 else 4)


@handles("movd_Ey_Vx")
def movd_Ey_Vx(cpu, mmu, ins, io):
    _sse_check(cpu)
    size = 8 if ins.rex & 8 else 4
    write_E(cpu, mmu, ins, size, cpu.xmm[ins.reg] & ((1 << (size * 8)) - 1))


@handles("movq_Vx_Wq")
def movq_Vx_Wq(cpu, mmu, ins, io):
    _sse_check(cpu)
    cpu.xmm[ins.reg] = _read_W(cpu, mmu, ins, 8, False)


@handles("movq_Wq_Vx")
def movq_Wq_Vx(cpu, mmu, ins, io):
    """The register form zeroes the destination's upper quadword (SDM Vol. 2 MOVQ)."""
    _sse_check(cpu)
    _write_W(cpu, mmu, ins, 8, cpu.xmm[ins.reg] & 0xFFFFFFFFFFFFFFFF, False)


def _lanes(value: int) -> bytes:
    return value.to_bytes(16, "little")


def _bytewise(fn):
    def h(cpu, mmu, ins, io):
        _sse_check(cpu)
        a = _lanes(cpu.xmm[ins.reg])
        b = _lanes(_read_W(cpu, mmu, ins, 16, True))
        cpu.xmm[ins.reg] = int.from_bytes(bytes(fn(x, y) for x, y in zip(a, b)), "little")
    return h


handles("pcmpeqb_Vx_Wx")(_bytewise(lambda x, y: 0xFF if x == y else 0))
handles("pminub_Vx_Wx")(_bytewise(min))


def _bitwise(fn):
    def h(cpu, mmu, ins, io):
        _sse_check(cpu)
        cpu.xmm[ins.reg] = fn(cpu.xmm[ins.reg], _read_W(cpu, mmu, ins, 16, True))
    return h


handles("pxor_Vx_Wx", "xorps_Vx_Wx", "xorpd_Vx_Wx")(_bitwise(lambda a, b: a ^ b))
handles("pand_Vx_Wx")(_bitwise(lambda a, b: a & b))
handles("por_Vx_Wx")(_bitwise(lambda a, b: a | b))


@handles("pmovmskb_Gd_Ux")
def pmovmskb_Gd_Ux(cpu, mmu, ins, io):
    _sse_check(cpu)
    mask = 0
    for i, byte in enumerate(_lanes(cpu.xmm[ins.rm])):
        mask |= (byte >> 7) << i
    set_reg(cpu, ins.reg, 8 if cpu.mode == MODE_LONG else 4, mask)


@handles("punpcklbw_Vx_Wx")
def punpcklbw_Vx_Wx(cpu, mmu, ins, io):
    _sse_check(cpu)
    a = _lanes(cpu.xmm[ins.reg])
    b = _lanes(_read_W(cpu, mmu, ins, 16, True))
    out = bytearray(16)
    out[0::2] = a[:8]
    out[1::2] = b[:8]
    cpu.xmm[ins.reg] = int.from_bytes(bytes(out), "little")


@handles("pshufd_Vx_Wx_Ib")
def pshufd_Vx_Wx_Ib(cpu, mmu, ins, io):
    _sse_check(cpu)
    src = _read_W(cpu, mmu, ins, 16, True)
    order = ins.imm
    value = 0
    for i in range(4):
        value |= ((src >> (32 * ((order >> (2 * i)) & 3))) & 0xFFFFFFFF) << (32 * i)
    cpu.xmm[ins.reg] = value
