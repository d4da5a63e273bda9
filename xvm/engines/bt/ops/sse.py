"""x87 control state, FXSAVE/FXRSTOR, MXCSR, and SSE/SSE2 moves and packed-integer ops.

Only what a 64-bit Linux kernel and a static busybox execute: the kernel
initialises and saves FPU state (FNINIT, FLDCW, FXSAVE/FXRSTOR, LDMXCSR)
and glibc's baseline (SSE2) string and memory functions use 128-bit moves
and packed byte/word/dword compares, arithmetic, shuffles and shifts.
Scalar floating point is in sse_fp.py, the x87 in x87.py (whose FpuState
FXSAVE/FXRSTOR save and restore), MMX in mmx.py (which reuses the lane
arithmetic here at 64 bits). XMM registers are 128-bit ints in
`cpu.xmm`. SSE instructions need CR4.OSFXSR (else #UD), CR0.EM clear (#UD)
and CR0.TS clear (#NM) (SDM Vol. 3 13.1).
"""

from __future__ import annotations

from xvm.arch.x86.regs import CR0_EM, CR0_TS, CR4_OSFXSR
from xvm.engines.bt.faults import NM, GuestFault
from xvm.engines.bt.ops.common import ea, gp0, handles, read_E, seg_linear, set_reg, ud, write_E
from xvm.engines.bt.ops.system import fpu_check
from xvm.engines.bt.ops.x87 import TOP_SHIFT, fpu
from xvm.engines.bt.state import MODE_LONG, RDI

MXCSR_MASK = 0xFFBF  # every MXCSR bit but DAZ is writable
M128 = (1 << 128) - 1


def sse_check(cpu) -> None:
    if cpu.cr0 & CR0_EM or not cpu.cr4 & CR4_OSFXSR:
        raise ud()
    if cpu.cr0 & CR0_TS:
        raise GuestFault(NM)


def _aligned_area(cpu, ins, size: int, write: bool) -> int:
    off = ea(cpu, ins)
    if off & 15:
        raise gp0()
    return seg_linear(cpu, ins.seg, off, size, write)


def store_fxsave_image(cpu, image: bytearray, nxmm: int) -> None:
    """Write the x87/SSE state bt models into a 512-byte FXSAVE image (SDM Vol. 1 Table 10-2).

    Shared by FXSAVE and by the kvm engine, which hands KVM's XSAVE area to bt;
    fields bt does not model keep what `image` held.
    """
    st = fpu(cpu)
    image[0:2] = st.fcw.to_bytes(2, "little")
    image[2:4] = st.fsw.to_bytes(2, "little")
    image[4] = st.ftw
    image[6:8] = st.fop.to_bytes(2, "little")
    image[8:16] = st.fip.to_bytes(8, "little")
    image[16:24] = st.fdp.to_bytes(8, "little")
    image[24:28] = cpu.mxcsr.to_bytes(4, "little")
    top = (st.fsw >> TOP_SHIFT) & 7
    for i in range(8):  # ST0..ST7 in stack order; the abridged tag word is by physical register
        image[32 + 16 * i:42 + 16 * i] = st.st[(top + i) & 7]
    for i in range(nxmm):
        image[160 + 16 * i:176 + 16 * i] = cpu.xmm[i].to_bytes(16, "little")


def load_fxsave_image(cpu, image: bytes, nxmm: int) -> None:
    """Load x87 state, MXCSR and XMM0..nxmm-1 from an FXSAVE image (the caller validates MXCSR)."""
    st = fpu(cpu)
    st.fcw = int.from_bytes(image[0:2], "little")
    st.fsw = int.from_bytes(image[2:4], "little")
    st.ftw = image[4]
    st.fop = int.from_bytes(image[6:8], "little")
    st.fip = int.from_bytes(image[8:16], "little")
    st.fdp = int.from_bytes(image[16:24], "little")
    top = (st.fsw >> TOP_SHIFT) & 7
    slots = [bytes(image[32 + 16 * i:42 + 16 * i]) for i in range(8)]
    st.st = [slots[(phys - top) & 7] for phys in range(8)]
    cpu.mxcsr = int.from_bytes(image[24:28], "little")
    for i in range(nxmm):
        cpu.xmm[i] = int.from_bytes(image[160 + 16 * i:176 + 16 * i], "little")


@handles("fxsave_M")
def fxsave_M(cpu, mmu, ins, io):
    """The 512-byte legacy FXSAVE image (SDM Vol. 1 Table 10-2; 64-bit layout with REX.W)."""
    fpu_check(cpu)
    lin = _aligned_area(cpu, ins, 512, True)
    image = bytearray(512)
    store_fxsave_image(cpu, image, 16 if cpu.mode == MODE_LONG else 8)
    image[28:32] = MXCSR_MASK.to_bytes(4, "little")
    mmu.write_bytes(lin, bytes(image), cpu.cpl == 3)


@handles("fxrstor_M")
def fxrstor_M(cpu, mmu, ins, io):
    fpu_check(cpu)
    lin = _aligned_area(cpu, ins, 512, False)
    image = mmu.read_bytes(lin, 512, cpu.cpl == 3)
    if int.from_bytes(image[24:28], "little") & ~MXCSR_MASK:
        raise gp0()
    load_fxsave_image(cpu, image, 16 if cpu.mode == MODE_LONG else 8)


@handles("ldmxcsr_Md")
def ldmxcsr_Md(cpu, mmu, ins, io):
    sse_check(cpu)
    value = read_E(cpu, mmu, ins, 4)
    if value & ~MXCSR_MASK:
        raise gp0()
    cpu.mxcsr = value


@handles("stmxcsr_Md")
def stmxcsr_Md(cpu, mmu, ins, io):
    sse_check(cpu)
    write_E(cpu, mmu, ins, 4, cpu.mxcsr)


# --- operands -------------------------------------------------------------------

def read_W(cpu, mmu, ins, size: int, aligned: bool = False) -> int:
    """xmm register (its low `size` bytes) or a `size`-byte memory operand; aligned: 16-byte or #GP(0)."""
    if not ins.is_mem:
        return cpu.xmm[ins.rm] & ((1 << (size * 8)) - 1)
    off = ea(cpu, ins)
    if aligned and off & 15:
        raise gp0()
    lin = seg_linear(cpu, ins.seg, off, size, False)
    if size <= 8:
        return mmu.read(lin, size, cpu.cpl == 3)
    return int.from_bytes(mmu.read_bytes(lin, size, cpu.cpl == 3), "little")


def write_M(cpu, mmu, ins, size: int, value: int, aligned: bool = False) -> None:
    """Store `size` bytes to the memory operand."""
    off = ea(cpu, ins)
    if aligned and off & 15:
        raise gp0()
    lin = seg_linear(cpu, ins.seg, off, size, True)
    if size <= 8:
        mmu.write(lin, size, value, cpu.cpl == 3)
    else:
        mmu.write_bytes(lin, value.to_bytes(size, "little"), cpu.cpl == 3)


_ALIGNED = frozenset(("movaps", "movapd", "movdqa", "movntps", "movntpd", "movntdq"))
_LOW64 = 0xFFFFFFFFFFFFFFFF


# --- moves -------------------------------------------------------------------

@handles("movups_Vx_Wx", "movupd_Vx_Wx", "movaps_Vx_Wx", "movapd_Vx_Wx", "movdqa_Vx_Wx", "movdqu_Vx_Wx")
def mov_Vx_Wx(cpu, mmu, ins, io):
    sse_check(cpu)
    cpu.xmm[ins.reg] = read_W(cpu, mmu, ins, 16, ins.op.mnemonic in _ALIGNED)


@handles("movups_Wx_Vx", "movupd_Wx_Vx", "movaps_Wx_Vx", "movapd_Wx_Vx", "movdqa_Wx_Vx", "movdqu_Wx_Vx",
         "movntps_Mx_Vx", "movntpd_Mx_Vx", "movntdq_Mx_Vx")
def mov_Wx_Vx(cpu, mmu, ins, io):
    sse_check(cpu)
    if ins.is_mem:
        write_M(cpu, mmu, ins, 16, cpu.xmm[ins.reg], ins.op.mnemonic in _ALIGNED)
    else:
        cpu.xmm[ins.rm] = cpu.xmm[ins.reg]


@handles("movss_Vx_Wd", "movsd_Vx_Wq")
def movs_scalar_load(cpu, mmu, ins, io):
    """From memory the rest of the register is zeroed; from a register only the low element moves."""
    sse_check(cpu)
    size = 4 if ins.op.mnemonic == "movss" else 8
    mask = (1 << (size * 8)) - 1
    value = read_W(cpu, mmu, ins, size)
    cpu.xmm[ins.reg] = value if ins.is_mem else (cpu.xmm[ins.reg] & ~mask) | value


@handles("movss_Wd_Vx", "movsd_Wq_Vx")
def movs_scalar_store(cpu, mmu, ins, io):
    sse_check(cpu)
    size = 4 if ins.op.mnemonic == "movss" else 8
    mask = (1 << (size * 8)) - 1
    if ins.is_mem:
        write_M(cpu, mmu, ins, size, cpu.xmm[ins.reg] & mask)
    else:
        cpu.xmm[ins.rm] = (cpu.xmm[ins.rm] & ~mask) | (cpu.xmm[ins.reg] & mask)


@handles("movlps_Vx_Mq", "movlpd_Vx_Mq", "movhps_Vx_Mq", "movhpd_Vx_Mq")
def movlh_load(cpu, mmu, ins, io):
    sse_check(cpu)
    value = read_W(cpu, mmu, ins, 8)
    old = cpu.xmm[ins.reg]
    if ins.op.mnemonic[3] == "l":
        cpu.xmm[ins.reg] = (old & ~_LOW64) | value
    else:
        cpu.xmm[ins.reg] = (old & _LOW64) | (value << 64)


@handles("movlps_Mq_Vx", "movlpd_Mq_Vx", "movhps_Mq_Vx", "movhpd_Mq_Vx")
def movlh_store(cpu, mmu, ins, io):
    sse_check(cpu)
    value = cpu.xmm[ins.reg]
    write_M(cpu, mmu, ins, 8, value & _LOW64 if ins.op.mnemonic[3] == "l" else value >> 64)


@handles("movhlps_Vx_Ux", "movlhps_Vx_Ux")
def movhlps(cpu, mmu, ins, io):
    sse_check(cpu)
    old, src = cpu.xmm[ins.reg], cpu.xmm[ins.rm]
    if ins.op.mnemonic == "movhlps":
        cpu.xmm[ins.reg] = (old & ~_LOW64) | (src >> 64)
    else:
        cpu.xmm[ins.reg] = (old & _LOW64) | ((src & _LOW64) << 64)


@handles("movnti_My_Gy")
def movnti_My_Gy(cpu, mmu, ins, io):
    size = 8 if ins.rex & 8 else 4
    write_M(cpu, mmu, ins, size, cpu.regs[ins.reg] & ((1 << (size * 8)) - 1))


def masked_store(cpu, mmu, ins, data: int, mask: int, size: int) -> None:
    """MASKMOVQ/MASKMOVDQU: store the bytes of `data` whose `mask` byte has its top bit set to DS:rDI.

    The bytes are written one by one, so unselected bytes are not touched (they may be MMIO or another
    thread's); the whole range is checked against the segment first.
    """
    lin = seg_linear(cpu, ins.seg, cpu.regs[RDI] & ins.addr_mask, size, True)
    for i in range(size):
        if (mask >> (8 * i + 7)) & 1:
            mmu.write(lin + i, 1, (data >> (8 * i)) & 0xFF, cpu.cpl == 3)


@handles("maskmovdqu_BDx_Vx_Ux")
def maskmovdqu(cpu, mmu, ins, io):
    sse_check(cpu)
    masked_store(cpu, mmu, ins, cpu.xmm[ins.reg], cpu.xmm[ins.rm], 16)


@handles("movd_Vx_Ey")
def movd_Vx_Ey(cpu, mmu, ins, io):
    sse_check(cpu)
    cpu.xmm[ins.reg] = read_E(cpu, mmu, ins, 8 if ins.rex & 8 else 4)


@handles("movd_Ey_Vx")
def movd_Ey_Vx(cpu, mmu, ins, io):
    sse_check(cpu)
    size = 8 if ins.rex & 8 else 4
    write_E(cpu, mmu, ins, size, cpu.xmm[ins.reg] & ((1 << (size * 8)) - 1))


@handles("movq_Vx_Wq")
def movq_Vx_Wq(cpu, mmu, ins, io):
    sse_check(cpu)
    cpu.xmm[ins.reg] = read_W(cpu, mmu, ins, 8)


@handles("movq_Wq_Vx")
def movq_Wq_Vx(cpu, mmu, ins, io):
    """The register form zeroes the destination's upper quadword (SDM Vol. 2 MOVQ)."""
    sse_check(cpu)
    value = cpu.xmm[ins.reg] & _LOW64
    if ins.is_mem:
        write_M(cpu, mmu, ins, 8, value)
    else:
        cpu.xmm[ins.rm] = value


@handles("movmskps_Gy_Ux", "movmskpd_Gy_Ux", "pmovmskb_Gy_Ux")
def movmsk(cpu, mmu, ins, io):
    """Sign bits of each byte/dword/qword into a GPR (zero-extended)."""
    sse_check(cpu)
    width = {"movmskps": 32, "movmskpd": 64, "pmovmskb": 8}[ins.op.mnemonic]
    set_reg(cpu, ins.reg, 4, sign_mask(cpu.xmm[ins.rm], width, 128))


def sign_mask(value: int, width: int, bits: int) -> int:
    """The sign bit of each `width`-bit lane of a `bits`-wide value, lane i in bit i (MOVMSKPS, PMOVMSKB)."""
    mask = 0
    for i in range(bits // width):
        mask |= ((value >> (width * i + width - 1)) & 1) << i
    return mask


# --- packed integer ---------------------------------------------------------------
# The lane arithmetic is written once for any register width: `packed_int_ops(128)` gives the xmm forms
# here, `packed_int_ops(64)` the MMX forms in mmx.py.

def split(value: int, width: int, bits: int = 128) -> list[int]:
    m = (1 << width) - 1
    return [(value >> s) & m for s in range(0, bits, width)]


def join(lanes: list[int], width: int) -> int:
    m = (1 << width) - 1
    value = 0
    for i, lane in enumerate(lanes):
        value |= (lane & m) << (i * width)
    return value


def _sx(v: int, width: int) -> int:
    return v - (1 << width) if v >> (width - 1) else v


def _saturate(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


def _sat_signed(v: int, width: int) -> int:
    return _saturate(v, -(1 << (width - 1)), (1 << (width - 1)) - 1)


def _sat_unsigned(v: int, width: int) -> int:
    return _saturate(v, 0, (1 << width) - 1)


def _lanewise(width: int, fn, bits: int):
    def op(a: int, b: int) -> int:
        return join([fn(x, y, width) for x, y in zip(split(a, width, bits), split(b, width, bits))], width)
    return op


def _unpack(width: int, high: bool, bits: int):
    def op(a: int, b: int) -> int:
        la, lb = split(a, width, bits), split(b, width, bits)
        half = len(la) // 2
        if high:
            la, lb = la[half:], lb[half:]
        out = []
        for x, y in zip(la[:half], lb[:half]):
            out += [x, y]
        return join(out, width)
    return op


def _pack(width: int, signed_out: bool, bits: int):
    """PACKSSWB/PACKSSDW/PACKUSWB: narrow signed lanes of a then b with saturation."""
    out_width = width // 2
    sat = _sat_signed if signed_out else _sat_unsigned

    def op(a: int, b: int) -> int:
        lanes = split(a, width, bits) + split(b, width, bits)
        return join([sat(_sx(v, width), out_width) for v in lanes], out_width)
    return op


def _shift(width: int, kind: str, bits: int):
    """Shift every lane by the count in the source's low quadword; a count >= the lane width clears
    the lane (PSRL/PSLL) or fills it with its sign (PSRA)."""

    def op(a: int, b: int) -> int:
        count = b & _LOW64
        if kind == "sra":
            count = min(count, width - 1)
            return join([_sx(x, width) >> count for x in split(a, width, bits)], width)
        if count >= width:
            return 0
        if kind == "srl":
            return join([x >> count for x in split(a, width, bits)], width)
        return join([x << count for x in split(a, width, bits)], width)
    return op


def _cmp_eq(x, y, w):
    return (1 << w) - 1 if x == y else 0


def _cmp_gt(x, y, w):
    return (1 << w) - 1 if _sx(x, w) > _sx(y, w) else 0


def _pmaddwd(x, y, w):
    """Two signed 16x16 products summed into the dword (0x8000 * 0x8000 twice wraps to 0x80000000)."""
    return _sx(x & 0xFFFF, 16) * _sx(y & 0xFFFF, 16) + _sx(x >> 16, 16) * _sx(y >> 16, 16)


def _psadbw(x, y, w):
    """Sum of the absolute differences of the quadword's eight bytes, in its low word."""
    return sum(abs(((x >> s) & 0xFF) - ((y >> s) & 0xFF)) for s in range(0, 64, 8))


def packed_int_ops(bits: int) -> dict:
    """mnemonic -> fn(dest value, source value) -> new dest value, for `bits`-wide registers (128 xmm, 64 mm)."""
    def lanes(width, fn):
        return _lanewise(width, fn, bits)

    ops = {
        "punpcklbw": _unpack(8, False, bits), "punpcklwd": _unpack(16, False, bits),
        "punpckldq": _unpack(32, False, bits), "punpckhbw": _unpack(8, True, bits),
        "punpckhwd": _unpack(16, True, bits), "punpckhdq": _unpack(32, True, bits),
        "packsswb": _pack(16, True, bits), "packssdw": _pack(32, True, bits), "packuswb": _pack(16, False, bits),
        "pcmpeqb": lanes(8, _cmp_eq), "pcmpeqw": lanes(16, _cmp_eq), "pcmpeqd": lanes(32, _cmp_eq),
        "pcmpgtb": lanes(8, _cmp_gt), "pcmpgtw": lanes(16, _cmp_gt), "pcmpgtd": lanes(32, _cmp_gt),
        "pminub": lanes(8, lambda x, y, w: min(x, y)), "pmaxub": lanes(8, lambda x, y, w: max(x, y)),
        "pminsw": lanes(16, lambda x, y, w: x if _sx(x, w) < _sx(y, w) else y),
        "pmaxsw": lanes(16, lambda x, y, w: x if _sx(x, w) > _sx(y, w) else y),
        "pavgb": lanes(8, lambda x, y, w: (x + y + 1) >> 1), "pavgw": lanes(16, lambda x, y, w: (x + y + 1) >> 1),
        "pmullw": lanes(16, lambda x, y, w: x * y),
        "pmulhw": lanes(16, lambda x, y, w: (_sx(x, w) * _sx(y, w)) >> 16),
        "pmulhuw": lanes(16, lambda x, y, w: (x * y) >> 16),
        "pmuludq": lanes(64, lambda x, y, w: (x & 0xFFFFFFFF) * (y & 0xFFFFFFFF)),
        "pmaddwd": lanes(32, _pmaddwd), "psadbw": lanes(64, _psadbw),
        "pand": lambda a, b: a & b, "pandn": lambda a, b: ~a & b, "por": lambda a, b: a | b,
        "pxor": lambda a, b: a ^ b,
    }
    for suffix, width in (("b", 8), ("w", 16), ("d", 32), ("q", 64)):
        ops["padd" + suffix] = lanes(width, lambda x, y, w: x + y)
        ops["psub" + suffix] = lanes(width, lambda x, y, w: x - y)
    for suffix, width in (("b", 8), ("w", 16)):
        ops["padds" + suffix] = lanes(width, lambda x, y, w: _sat_signed(_sx(x, w) + _sx(y, w), w))
        ops["psubs" + suffix] = lanes(width, lambda x, y, w: _sat_signed(_sx(x, w) - _sx(y, w), w))
        ops["paddus" + suffix] = lanes(width, lambda x, y, w: _sat_unsigned(x + y, w))
        ops["psubus" + suffix] = lanes(width, lambda x, y, w: _sat_unsigned(x - y, w))
    for name, width in (("w", 16), ("d", 32), ("q", 64)):
        ops["psrl" + name] = _shift(width, "srl", bits)
        ops["psll" + name] = _shift(width, "sll", bits)
        if width < 64:
            ops["psra" + name] = _shift(width, "sra", bits)
    return ops


#: The xmm forms: the integer ops, the quadword unpacks and the bitwise ps/pd ops that share their arithmetic.
PACKED_INT = packed_int_ops(128)
PACKED_INT["punpcklqdq"] = _unpack(64, False, 128)
PACKED_INT["punpckhqdq"] = _unpack(64, True, 128)
for _alias, _name in (("unpcklps", "punpckldq"), ("unpckhps", "punpckhdq"), ("unpcklpd", "punpcklqdq"),
                      ("unpckhpd", "punpckhqdq"), ("andps", "pand"), ("andpd", "pand"), ("andnps", "pandn"),
                      ("andnpd", "pandn"), ("orps", "por"), ("orpd", "por"), ("xorps", "pxor"), ("xorpd", "pxor")):
    PACKED_INT[_alias] = PACKED_INT[_name]


def _packed(fn):
    """A Vx,Wx op: memory sources must be 16-byte aligned (legacy SSE encoding, SDM Vol. 1 11.4.1)."""

    def h(cpu, mmu, ins, io):
        sse_check(cpu)
        cpu.xmm[ins.reg] = fn(cpu.xmm[ins.reg], read_W(cpu, mmu, ins, 16, True)) & M128
    return h


for _name, _fn in PACKED_INT.items():
    handles(f"{_name}_Vx_Wx")(_packed(_fn))


def _shift_imm(fn):
    def h(cpu, mmu, ins, io):
        sse_check(cpu)
        cpu.xmm[ins.rm] = fn(cpu.xmm[ins.rm], ins.imm) & M128
    return h


for _name in ("psrlw", "psraw", "psllw", "psrld", "psrad", "pslld", "psrlq", "psllq"):
    handles(f"{_name}_Ux_Ib")(_shift_imm(PACKED_INT[_name]))
handles("psrldq_Ux_Ib")(_shift_imm(lambda a, n: a >> (8 * n) if n < 16 else 0))
handles("pslldq_Ux_Ib")(_shift_imm(lambda a, n: (a << (8 * n)) if n < 16 else 0))


@handles("pshufd_Vx_Wx_Ib", "pshuflw_Vx_Wx_Ib", "pshufhw_Vx_Wx_Ib")
def pshuf(cpu, mmu, ins, io):
    sse_check(cpu)
    src = read_W(cpu, mmu, ins, 16, True)
    order = ins.imm
    name = ins.op.mnemonic
    if name == "pshufd":
        cpu.xmm[ins.reg] = join(shuffle4(split(src, 32), order), 32)
        return
    words = split(src, 16)
    base = 0 if name == "pshuflw" else 4
    words[base:base + 4] = shuffle4(words[base:base + 4], order)
    cpu.xmm[ins.reg] = join(words, 16)


def shuffle4(lanes: list[int], order: int) -> list[int]:
    """Four lanes picked by the 2-bit fields of an imm8 (PSHUFD, PSHUFLW/HW, PSHUFW)."""
    return [lanes[(order >> (2 * i)) & 3] for i in range(4)]


@handles("shufps_Vx_Wx_Ib", "shufpd_Vx_Wx_Ib")
def shufps(cpu, mmu, ins, io):
    sse_check(cpu)
    src = read_W(cpu, mmu, ins, 16, True)
    dst = cpu.xmm[ins.reg]
    order = ins.imm
    if ins.op.mnemonic == "shufps":
        a, b = split(dst, 32), split(src, 32)
        cpu.xmm[ins.reg] = join([a[order & 3], a[(order >> 2) & 3], b[(order >> 4) & 3], b[(order >> 6) & 3]], 32)
    else:
        a, b = split(dst, 64), split(src, 64)
        cpu.xmm[ins.reg] = join([a[order & 1], b[(order >> 1) & 1]], 64)


@handles("pextrw_Gy_Ux_Ib")
def pextrw(cpu, mmu, ins, io):
    sse_check(cpu)
    set_reg(cpu, ins.reg, 4, (cpu.xmm[ins.rm] >> (16 * (ins.imm & 7))) & 0xFFFF)


@handles("pinsrw_Vx_Ew_Ib")
def pinsrw(cpu, mmu, ins, io):
    sse_check(cpu)
    cpu.xmm[ins.reg] = insert_word(cpu.xmm[ins.reg], read_E(cpu, mmu, ins, 2), ins.imm & 7)


def insert_word(value: int, word: int, index: int) -> int:
    """`value` with its word `index` replaced (PINSRW)."""
    shift = 16 * index
    return (value & ~(0xFFFF << shift)) | (word << shift)
