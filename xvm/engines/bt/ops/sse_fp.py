"""SSE/SSE2 scalar floating point: arithmetic, comparisons into EFLAGS, conversions.

Python floats are IEEE-754 binary64 with round-to-nearest-even, which is
what these instructions compute under the default MXCSR; single precision
is computed in double and rounded once to binary32, which is exact for
+ - * / and sqrt (the double result carries more than 2*24+2 bits, so the
second rounding cannot differ). The SIMD floating-point exceptions (SDM
Vol. 1 11.5.2) are detected exactly — inexactness by comparing with the
exact rational result — and set their MXCSR flags; masked ones deliver
the IEEE default results (QNaN indefinite, infinities, the "integer
indefinite" of conversions), an unmasked one raises #XM (or #UD without
CR4.OSXMMEXCPT) with the destination unchanged. MXCSR.RC is honoured by
CVTSD2SI/CVTSS2SI only; DAZ/FTZ are not modelled.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from xvm.arch.x86.regs import CR4_OSXMMEXCPT
from xvm.engines.bt.faults import UD, XM, GuestFault
from xvm.engines.bt.ops.common import CF, OSZAPC, PF, ZF, handles, read_E, round_rc, set_reg
from xvm.engines.bt.ops.sse import read_W, sse_check

_D = struct.Struct("<d")
_F = struct.Struct("<f")
_QNAN64 = 0xFFF8000000000000  # the default NaN ("real indefinite")
_QNAN32 = 0xFFC00000


def from_bits(bits: int, double: bool) -> float:
    return _D.unpack(bits.to_bytes(8, "little"))[0] if double else _F.unpack(bits.to_bytes(4, "little"))[0]


def to_bits(value: float, double: bool) -> int:
    if double:
        return int.from_bytes(_D.pack(value), "little")
    try:
        return int.from_bytes(_F.pack(value), "little")
    except OverflowError:  # rounds to infinity in binary32
        return 0xFF800000 if value < 0 else 0x7F800000


def _nan_bits(bits: int, double: bool) -> bool:
    if double:
        return (bits >> 52) & 0x7FF == 0x7FF and bits & ((1 << 52) - 1) != 0
    return (bits >> 23) & 0xFF == 0xFF and bits & ((1 << 23) - 1) != 0


def _quiet(bits: int, double: bool) -> int:
    return bits | (1 << 51 if double else 1 << 22)


# MXCSR exception flags (SDM Vol. 1 10.2.3).
IE, DE, ZE, OE, UE, PE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def signal(cpu, flags: int) -> None:
    """Record SIMD FP exceptions in MXCSR; raise #XM (#UD without OSXMMEXCPT) for an unmasked one."""
    if not flags:
        return
    cpu.mxcsr |= flags
    if flags & ~(cpu.mxcsr >> 7) & 0x3F:
        raise GuestFault(XM if cpu.cr4 & CR4_OSXMMEXCPT else UD)


def _snan_bits(bits: int, double: bool) -> bool:
    return _nan_bits(bits, double) and not bits & (1 << 51 if double else 1 << 22)


def _denormal_bits(bits: int, double: bool) -> bool:
    if double:
        return (bits >> 52) & 0x7FF == 0 and bits & ((1 << 52) - 1) != 0
    return (bits >> 23) & 0xFF == 0 and bits & ((1 << 23) - 1) != 0


_MIN_NORMAL = {True: 2.2250738585072014e-308, False: 1.1754943508222875e-38}


def _rounding_flags(exact: Fraction, bits: int, double: bool) -> int:
    """PE, and OE/UE with it, for a finite exact result delivered as `bits`."""
    r = from_bits(bits, double)
    if math.isinf(r):
        return OE | PE
    if Fraction(r) == exact:
        return 0
    return PE | (UE if abs(r) < _MIN_NORMAL[double] else 0)


def _arith(stem: str, a: int, b: int, double: bool) -> tuple[int, int]:
    """dest OP src on raw bit patterns: (result bits, MXCSR exception flags).

    NaN operands propagate (the first NaN, quieted; SDM Vol. 1 4.8.3.5).
    """
    flags = DE if _denormal_bits(b, double) or (stem != "sqrt" and _denormal_bits(a, double)) else 0
    if stem in ("min", "max"):
        x, y = from_bits(a, double), from_bits(b, double)
        if _nan_bits(a, double) or _nan_bits(b, double):
            return b, IE  # MINSD/MAXSD return the source for NaNs (and signal invalid for any NaN)
        if x == y == 0.0:
            return b, flags  # ... and for +0/-0 (SDM Vol. 2 MINSD)
        return (a if (x < y if stem == "min" else x > y) else b), flags
    if stem == "sqrt":
        if _nan_bits(b, double):
            return _quiet(b, double), IE if _snan_bits(b, double) else 0
        y = from_bits(b, double)
        if y < 0:
            return (_QNAN64 if double else _QNAN32), IE
        bits = to_bits(math.sqrt(y), double)
        if math.isinf(y):
            return bits, flags
        root = Fraction(from_bits(bits, double))
        return bits, flags | (0 if root * root == Fraction(y) else PE)
    for v in (a, b):
        if _nan_bits(v, double):
            signalling = _snan_bits(a, double) or _snan_bits(b, double)
            return _quiet(v, double), IE if signalling else 0
    x, y = from_bits(a, double), from_bits(b, double)
    indefinite = _QNAN64 if double else _QNAN32
    if stem == "div" and y == 0.0:
        if x == 0.0:
            return indefinite, IE
        if math.isinf(x):
            return to_bits(math.copysign(math.inf, x) * math.copysign(1.0, y), double), flags
        return to_bits(math.copysign(math.inf, x) * math.copysign(1.0, y), double), flags | ZE
    if stem == "add":
        r = x + y
    elif stem == "sub":
        r = x - y
    elif stem == "mul":
        r = x * y
    else:
        r = x / y
    if math.isnan(r):  # inf - inf, 0 * inf, inf / inf
        return indefinite, IE
    bits = to_bits(r, double)
    if math.isinf(x) or math.isinf(y):
        return bits, flags
    fx, fy = Fraction(x), Fraction(y)
    exact = fx + fy if stem == "add" else fx - fy if stem == "sub" else fx * fy if stem == "mul" else fx / fy
    return bits, flags | _rounding_flags(exact, bits, double)


def _make_scalar(stem: str, double: bool):
    size = 8 if double else 4
    mask = (1 << (size * 8)) - 1

    def h(cpu, mmu, ins, io):
        sse_check(cpu)
        dst = cpu.xmm[ins.reg]
        result, flags = _arith(stem, dst & mask, read_W(cpu, mmu, ins, size), double)
        signal(cpu, flags)
        cpu.xmm[ins.reg] = (dst & ~mask) | result
    return h


for _stem in ("sqrt", "add", "mul", "sub", "min", "div", "max"):
    handles(f"{_stem}sd_Vx_Wq")(_make_scalar(_stem, True))
    handles(f"{_stem}ss_Vx_Wd")(_make_scalar(_stem, False))


@handles("ucomisd_Vx_Wq", "comisd_Vx_Wq", "ucomiss_Vx_Wd", "comiss_Vx_Wd")
def comis(cpu, mmu, ins, io):
    """ZF/PF/CF from the comparison (unordered: all three); OF, SF, AF cleared."""
    sse_check(cpu)
    double = ins.op.mnemonic.endswith("sd")
    size = 8 if double else 4
    a_bits = cpu.xmm[ins.reg] & ((1 << (size * 8)) - 1)
    b_bits = read_W(cpu, mmu, ins, size)
    if _nan_bits(a_bits, double) or _nan_bits(b_bits, double):
        # COMISD signals invalid for any NaN, UCOMISD only for signalling ones.
        quiet_ok = ins.op.mnemonic.startswith("u")
        if not quiet_ok or _snan_bits(a_bits, double) or _snan_bits(b_bits, double):
            signal(cpu, IE)
        f = ZF | PF | CF
    else:
        signal(cpu, DE if _denormal_bits(a_bits, double) or _denormal_bits(b_bits, double) else 0)
        a, b = from_bits(a_bits, double), from_bits(b_bits, double)
        f = 0 if a > b else CF if a < b else ZF
    cpu.rflags = (cpu.rflags & ~OSZAPC) | f


@handles("cvtsi2sd_Vx_Ey", "cvtsi2ss_Vx_Ey")
def cvtsi2sd(cpu, mmu, ins, io):
    sse_check(cpu)
    size = 8 if ins.rex & 8 else 4
    value = read_E(cpu, mmu, ins, size)
    if value >> (size * 8 - 1):
        value -= 1 << (size * 8)
    double = ins.op.mnemonic == "cvtsi2sd"
    mask = 0xFFFFFFFFFFFFFFFF if double else 0xFFFFFFFF
    bits = to_bits(float(value), double)
    signal(cpu, _rounding_flags(Fraction(value), bits, double))
    cpu.xmm[ins.reg] = (cpu.xmm[ins.reg] & ~mask) | bits


@handles("cvttsd2si_Gy_Wq", "cvtsd2si_Gy_Wq", "cvttss2si_Gy_Wd", "cvtss2si_Gy_Wd")
def cvtsd2si(cpu, mmu, ins, io):
    sse_check(cpu)
    name = ins.op.mnemonic
    double = name.endswith("sd2si")
    bits = read_W(cpu, mmu, ins, 8 if double else 4)
    size = 8 if ins.rex & 8 else 4
    indefinite = 1 << (size * 8 - 1)
    x = from_bits(bits, double)
    flags = 0  # conversions to integer signal only invalid and precision (SDM Vol. 2 CVTSD2SI)
    if math.isnan(x) or math.isinf(x):
        result, flags = indefinite, IE
    else:
        n = round_rc(x, 3 if name.startswith("cvtt") else (cpu.mxcsr >> 13) & 3)
        if -indefinite <= n < indefinite:
            result = n
            flags |= PE if n != x else 0
        else:
            result, flags = indefinite, IE
    signal(cpu, flags)
    set_reg(cpu, ins.reg, size, result)


@handles("cvtss2sd_Vx_Wd", "cvtsd2ss_Vx_Wq")
def cvtss2sd(cpu, mmu, ins, io):
    sse_check(cpu)
    to_double = ins.op.mnemonic == "cvtss2sd"
    src = read_W(cpu, mmu, ins, 4 if to_double else 8)
    flags = DE if _denormal_bits(src, not to_double) else 0
    if _nan_bits(src, not to_double):
        flags = IE if _snan_bits(src, not to_double) else 0
        # A quieted NaN keeps its sign and top payload bits across the format change.
        sign = src >> (31 if to_double else 63)
        payload = (src & 0x3FFFFF) << 29 if to_double else (src >> 29) & 0x3FFFFF
        result = ((sign << 63) | (0x7FF << 52) | (1 << 51) | payload if to_double
                  else (sign << 31) | (0xFF << 23) | (1 << 22) | payload)
    else:
        x = from_bits(src, not to_double)
        result = to_bits(x, to_double)
        if not math.isinf(x):
            flags |= _rounding_flags(Fraction(x), result, to_double)
    signal(cpu, flags)
    mask = 0xFFFFFFFFFFFFFFFF if to_double else 0xFFFFFFFF
    cpu.xmm[ins.reg] = (cpu.xmm[ins.reg] & ~mask) | result
