"""The x87 FPU (SDM Vol. 1 ch. 8): register stack, loads and stores, arithmetic, compares, control.

State lives in an `FpuState` (`cpu.fpu`): control/status/tag words and the
eight physical data registers as 80-bit images (what FXSAVE stores). TOP is
FSW bits 11-13; ST(i) is physical register (TOP + i) mod 8; the tag word is
kept in FXSAVE's abridged form (bit set = register in use). MMX registers
alias the physical registers' significands (mmx.py).

Arithmetic is computed with Python floats, i.e. IEEE binary64: results
carry a 53-bit significand, as with FCW.PC = 10 (double precision), not the
64 bits of the default extended precision. 80-bit operands are rounded to
double on use and results widened exactly on store, so integer and double
computations (what Linux and libc do) are exact; long double arithmetic is
slightly less precise than on hardware. Exceptions are handled as masked:
the FSW flags are set (IE with SF for stack over/underflow, ZE, PE is not
tracked) and the default results delivered; an unmasked exception does not
raise #MF. FIP/FDP/FOP are not recorded (they read as zero).
"""

from __future__ import annotations

import math
import struct

from xvm.engines.bt.ops.common import CF, OSZAPC, PF, ZF, handles, mem_linear, read_E, round_rc, set_reg, write_E
from xvm.engines.bt.ops.system import fpu_check

# FSW bits (SDM Vol. 1 8.1.3).
FSW_IE, FSW_ZE, FSW_SF = 0x0001, 0x0004, 0x0040
C0, C1, C2, C3 = 0x0100, 0x0200, 0x0400, 0x4000
TOP_SHIFT = 11
TOP_MASK = 7 << TOP_SHIFT
_CONSTANTS = {"fld1": 1.0, "fldz": 0.0, "fldpi": math.pi, "fldl2e": math.log2(math.e), "fldl2t": math.log2(10.0),
              "fldlg2": math.log10(2.0), "fldln2": math.log(2.0)}
_INDEFINITE = float("nan")


class FpuState:
    """x87 control/status/tag words and the eight physical data registers (80-bit images)."""

    __slots__ = ("fcw", "fsw", "ftw", "fop", "fip", "fdp", "st")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """FNINIT state (SDM Vol. 1 8.1.10): FCW 037F, FSW 0 (TOP 0), all registers empty."""
        self.fcw = 0x037F
        self.fsw = 0
        self.ftw = 0
        self.fop = 0
        self.fip = 0
        self.fdp = 0
        self.st = [bytes(10)] * 8


def fpu(cpu) -> FpuState:
    state = cpu.fpu
    if state is None:
        state = cpu.fpu = FpuState()
    return state


# --- 80-bit images <-> Python floats ------------------------------------------------

def to_ext(x: float) -> bytes:
    """The 80-bit extended image of a double (exact: every double is an extended value)."""
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    if x == 0.0:
        return bytes(8) + sign.to_bytes(2, "little")
    if math.isinf(x):
        return (1 << 63).to_bytes(8, "little") + (sign | 0x7FFF).to_bytes(2, "little")
    if math.isnan(x):
        return (3 << 62).to_bytes(8, "little") + (sign | 0x7FFF).to_bytes(2, "little")
    m, e = math.frexp(abs(x))  # x = m * 2**e, 0.5 <= m < 1
    significand = int(m * (1 << 64))  # exact: m has at most 53 bits
    return significand.to_bytes(8, "little") + (sign | (e - 1 + 16383)).to_bytes(2, "little")


def from_ext(image: bytes) -> float:
    """The double nearest to an 80-bit extended image (infinity beyond the double range)."""
    significand = int.from_bytes(image[:8], "little")
    top = int.from_bytes(image[8:10], "little")
    sign = -1.0 if top & 0x8000 else 1.0
    exponent = top & 0x7FFF
    if exponent == 0x7FFF:
        return sign * math.inf if significand & ((1 << 63) - 1) == 0 else _INDEFINITE
    if exponent == 0:
        exponent = 1  # denormals
    try:
        return sign * math.ldexp(float(significand), exponent - 16383 - 63)
    except OverflowError:
        return sign * math.inf


# --- the register stack ----------------------------------------------------------------

def _top(st: FpuState) -> int:
    return (st.fsw >> TOP_SHIFT) & 7


def _set_top(st: FpuState, top: int) -> None:
    st.fsw = (st.fsw & ~TOP_MASK) | ((top & 7) << TOP_SHIFT)


def get(st: FpuState, i: int) -> float:
    """ST(i); an empty register is a stack underflow (IE, SF, C1=0) reading the indefinite NaN."""
    phys = (_top(st) + i) & 7
    if not st.ftw >> phys & 1:
        st.fsw = (st.fsw | FSW_IE | FSW_SF) & ~C1
        return _INDEFINITE
    return from_ext(st.st[phys])


def put(st: FpuState, i: int, value: float) -> None:
    phys = (_top(st) + i) & 7
    st.st[phys] = to_ext(value)
    st.ftw |= 1 << phys


def push(st: FpuState, value: float) -> None:
    """Push onto the stack; onto a full register it is a stack overflow (IE, SF, C1=1, indefinite)."""
    top = (_top(st) - 1) & 7
    _set_top(st, top)
    if st.ftw >> top & 1:
        st.fsw |= FSW_IE | FSW_SF | C1
        value = _INDEFINITE
    st.st[top] = to_ext(value)
    st.ftw |= 1 << top


def pop(st: FpuState) -> None:
    top = _top(st)
    st.ftw &= ~(1 << top)
    _set_top(st, top + 1)


# --- memory operands --------------------------------------------------------------------

_REAL = {4: struct.Struct("<f"), 8: struct.Struct("<d")}


def _load_real(cpu, mmu, ins, size: int) -> float:
    if size == 10:
        return from_ext(mmu.read_bytes(mem_linear(cpu, ins, 10, False), 10, cpu.cpl == 3))
    return _REAL[size].unpack(read_E(cpu, mmu, ins, size).to_bytes(size, "little"))[0]


def _store_real(cpu, mmu, ins, size: int, value: float) -> None:
    if size == 10:
        mmu.write_bytes(mem_linear(cpu, ins, 10, True), to_ext(value), cpu.cpl == 3)
        return
    try:
        image = _REAL[size].pack(value)
    except OverflowError:  # beyond binary32: rounds to infinity
        image = _REAL[size].pack(math.copysign(math.inf, value))
    write_E(cpu, mmu, ins, size, int.from_bytes(image, "little"))


def _load_int(cpu, mmu, ins, size: int) -> int:
    v = read_E(cpu, mmu, ins, size)
    return v - (1 << (8 * size)) if v >> (8 * size - 1) else v


_SIZE = {"Md": 4, "Mq": 8, "Mt": 10, "Mw": 2}


# --- handlers ------------------------------------------------------------------------------

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


@handles("fld_Md", "fld_Mq", "fld_Mt")
def fld_M(cpu, mmu, ins, io):
    fpu_check(cpu)
    push(fpu(cpu), _load_real(cpu, mmu, ins, _SIZE[ins.op.operands[0]]))


@handles("fld_STi")
def fld_STi(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    push(st, get(st, ins.rm & 7))


@handles("fild_Mw", "fild_Md", "fild_Mq")
def fild(cpu, mmu, ins, io):
    fpu_check(cpu)
    push(fpu(cpu), float(_load_int(cpu, mmu, ins, _SIZE[ins.op.operands[0]])))


@handles(*(f"{name}_{spec}" for name in ("fst", "fstp") for spec in ("Md", "Mq")), "fstp_Mt")
def fst_M(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    _store_real(cpu, mmu, ins, _SIZE[ins.op.operands[0]], get(st, 0))
    if ins.op.mnemonic == "fstp":
        pop(st)


@handles("fst_STi", "fstp_STi")
def fst_STi(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    put(st, ins.rm & 7, get(st, 0))
    if ins.op.mnemonic == "fstp":
        pop(st)


@handles(*(f"{name}_{spec}" for name in ("fist", "fistp", "fisttp") for spec in ("Mw", "Md")), "fistp_Mq",
         "fisttp_Mq")
def fist(cpu, mmu, ins, io):
    """Out-of-range or NaN values store the integer indefinite (IE)."""
    fpu_check(cpu)
    st = fpu(cpu)
    size = _SIZE[ins.op.operands[0]]
    x = get(st, 0)
    limit = 1 << (8 * size - 1)
    n = None
    if not (math.isnan(x) or math.isinf(x)):
        n = round_rc(x, 3 if ins.op.mnemonic == "fisttp" else (st.fcw >> 10) & 3)
    if n is None or not -limit <= n < limit:
        st.fsw |= FSW_IE
        n = limit
    write_E(cpu, mmu, ins, size, n)
    if ins.op.mnemonic != "fist":
        pop(st)


@handles(*_CONSTANTS)
def fld_constant(cpu, mmu, ins, io):
    fpu_check(cpu)
    push(fpu(cpu), _CONSTANTS[ins.op.mnemonic])


@handles("fxch_ST0_STi")
def fxch(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    i = ins.rm & 7
    a, b = get(st, 0), get(st, i)
    put(st, 0, b)
    put(st, i, a)


def _compute(st: FpuState, name: str, a: float, b: float) -> float:
    """a OP b with the IEEE default results of masked exceptions (IE: indefinite, ZE: signed infinity)."""
    try:
        if name == "add":
            r = a + b
        elif name == "sub":
            r = a - b
        elif name == "mul":
            r = a * b
        else:
            r = a / b
    except ZeroDivisionError:
        if a == 0.0 or math.isnan(a):
            st.fsw |= FSW_IE
            return _INDEFINITE
        st.fsw |= FSW_ZE
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    except OverflowError:
        return math.copysign(math.inf, a * b if name in ("mul", "div") else a)
    if math.isnan(r) and not (math.isnan(a) or math.isnan(b)):
        st.fsw |= FSW_IE
    return r


def _op_of(mnemonic: str) -> tuple[str, bool]:
    """('add'|'sub'|'mul'|'div', reversed) from fadd/fisubr/fdivrp..."""
    stem = mnemonic[2:] if mnemonic.startswith("fi") else mnemonic[1:]
    if stem.endswith("p"):  # the popping forms
        stem = stem[:-1]
    reverse = stem.endswith("r")
    return (stem[:-1] if reverse else stem), reverse


def _arith(cpu, mmu, ins, io):
    """FADD/FSUB/FSUBR/FMUL/FDIV/FDIVR and their FI* and *P forms."""
    fpu_check(cpu)
    st = fpu(cpu)
    name, reverse = _op_of(ins.op.mnemonic)
    ops = ins.op.operands
    if ops[0] == "STi":  # ST(i) = ST(i) op ST(0), then maybe pop
        i = ins.rm & 7
        dest, src = get(st, i), get(st, 0)
        put(st, i, _compute(st, name, src, dest) if reverse else _compute(st, name, dest, src))
        if ins.op.mnemonic.endswith("p"):
            pop(st)
        return
    if ops[0] == "ST0":
        src = get(st, ins.rm & 7)
    elif ins.op.mnemonic.startswith("fi"):
        src = float(_load_int(cpu, mmu, ins, _SIZE[ops[0]]))
    else:
        src = _load_real(cpu, mmu, ins, _SIZE[ops[0]])
    dest = get(st, 0)
    put(st, 0, _compute(st, name, src, dest) if reverse else _compute(st, name, dest, src))


for _name in ("fadd", "fmul", "fsub", "fsubr", "fdiv", "fdivr"):
    handles(f"{_name}_Md", f"{_name}_Mq", f"{_name}_ST0_STi", f"fi{_name[1:]}_Md", f"fi{_name[1:]}_Mw")(_arith)
for _name in ("fadd", "fmul", "fsubr", "fsub", "fdivr", "fdiv"):
    handles(f"{_name}_STi_ST0", f"{_name}p_STi_ST0")(_arith)


def _compare_codes(a: float, b: float) -> int:
    """C3/C2/C0 of comparing a with b (SDM Vol. 1 Table 8-7)."""
    if math.isnan(a) or math.isnan(b):
        return C3 | C2 | C0
    if a > b:
        return 0
    return C0 if a < b else C3


def _compare(cpu, mmu, ins, io):
    """FCOM/FCOMP/FCOMPP/FUCOM*/FICOM*/FTST: condition codes C3/C2/C0, C1 cleared."""
    fpu_check(cpu)
    st = fpu(cpu)
    name = ins.op.mnemonic
    ops = ins.op.operands
    if name == "ftst":
        src = 0.0
    elif name in ("fcompp", "fucompp"):
        src = get(st, 1)
    elif ops[0] == "ST0":
        src = get(st, ins.rm & 7)
    elif name.startswith("fi"):
        src = float(_load_int(cpu, mmu, ins, _SIZE[ops[0]]))
    else:
        src = _load_real(cpu, mmu, ins, _SIZE[ops[0]])
    a = get(st, 0)
    codes = _compare_codes(a, src)
    if codes == C3 | C2 | C0 and not name.startswith("fu"):
        st.fsw |= FSW_IE  # ordered compares signal invalid on NaN
    st.fsw = (st.fsw & ~(C3 | C2 | C1 | C0)) | codes
    pops = 2 if name in ("fcompp", "fucompp") else 1 if name in ("fcomp", "ficomp", "fucomp") else 0
    for _ in range(pops):
        pop(st)


for _h in ("fcom_Md", "fcom_Mq", "fcom_ST0_STi", "fcomp_Md", "fcomp_Mq", "fcomp_ST0_STi", "ficom_Md", "ficom_Mw",
           "ficomp_Md", "ficomp_Mw", "fcompp", "fucompp", "fucom_ST0_STi", "fucomp_ST0_STi", "ftst"):
    handles(_h)(_compare)


@handles("fcomi_ST0_STi", "fucomi_ST0_STi", "fcomip_ST0_STi", "fucomip_ST0_STi")
def fcomi(cpu, mmu, ins, io):
    """Compare into ZF/PF/CF (SDM Vol. 2 FCOMI); OF, SF, AF cleared."""
    fpu_check(cpu)
    st = fpu(cpu)
    a, b = get(st, 0), get(st, ins.rm & 7)
    if math.isnan(a) or math.isnan(b):
        f = ZF | PF | CF
        if not ins.op.mnemonic.startswith("fu"):
            st.fsw |= FSW_IE
    else:
        f = 0 if a > b else CF if a < b else ZF
    cpu.rflags = (cpu.rflags & ~OSZAPC) | f
    if ins.op.mnemonic.endswith("p"):
        pop(st)


@handles("fchs", "fabs", "fsqrt", "frndint")
def funary(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    x = get(st, 0)
    name = ins.op.mnemonic
    if name == "fchs":
        r = -x
    elif name == "fabs":
        r = abs(x)
    elif name == "fsqrt":
        if x < 0:
            st.fsw |= FSW_IE
            r = _INDEFINITE
        else:
            r = math.sqrt(x)
    else:
        r = x if math.isnan(x) or math.isinf(x) else math.copysign(float(round_rc(x, (st.fcw >> 10) & 3)), x)
    put(st, 0, r)


@handles("fxam")
def fxam(cpu, mmu, ins, io):
    """Classify ST(0) into C3/C2/C0 and its sign into C1 (SDM Vol. 2 FXAM)."""
    fpu_check(cpu)
    st = fpu(cpu)
    phys = _top(st)
    image = st.st[phys]
    sign = C1 if image[9] & 0x80 else 0
    exponent = int.from_bytes(image[8:10], "little") & 0x7FFF
    significand = int.from_bytes(image[:8], "little")
    if not st.ftw >> phys & 1:
        codes = C3 | C0  # empty
    elif exponent == 0x7FFF:
        codes = C2 | C0 if significand & ((1 << 63) - 1) == 0 else C0  # infinity / NaN
    elif exponent == 0:
        codes = C3 if significand == 0 else C3 | C2  # zero / denormal
    else:
        codes = C2  # normal
    st.fsw = (st.fsw & ~(C3 | C2 | C1 | C0)) | codes | sign


@handles("fincstp", "fdecstp")
def fincstp(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    _set_top(st, _top(st) + (1 if ins.op.mnemonic == "fincstp" else -1))
    st.fsw &= ~C1


@handles("ffree_STi")
def ffree(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    st.ftw &= ~(1 << ((_top(st) + (ins.rm & 7)) & 7))


@handles("fnop")
def fnop(cpu, mmu, ins, io):
    fpu_check(cpu)


def _full_tags(st: FpuState) -> int:
    """The 16-bit tag word (2 bits per physical register: valid, zero, special, empty)."""
    tags = 0
    for phys in range(8):
        if not st.ftw >> phys & 1:
            tag = 3
        else:
            exponent = int.from_bytes(st.st[phys][8:10], "little") & 0x7FFF
            significand = int.from_bytes(st.st[phys][:8], "little")
            if exponent == 0 and significand == 0:
                tag = 1
            elif exponent == 0x7FFF or exponent == 0 or not significand >> 63:
                tag = 2
            else:
                tag = 0
        tags |= tag << (2 * phys)
    return tags


@handles("fnstenv_Me")
def fnstenv(cpu, mmu, ins, io):
    """Store the environment (protected-mode layout, SDM Vol. 1 8.1.10) and mask all exceptions."""
    fpu_check(cpu)
    st = fpu(cpu)
    words = (st.fcw, st.fsw, _full_tags(st), 0, 0, 0, 0)
    unit = 2 if ins.opsize == 2 else 4
    lin = mem_linear(cpu, ins, 7 * unit, True)
    mmu.write_bytes(lin, b"".join(w.to_bytes(unit, "little") for w in words), cpu.cpl == 3)
    st.fcw |= 0x3F


@handles("fldenv_Me")
def fldenv(cpu, mmu, ins, io):
    fpu_check(cpu)
    st = fpu(cpu)
    unit = 2 if ins.opsize == 2 else 4
    data = mmu.read_bytes(mem_linear(cpu, ins, 7 * unit, False), 7 * unit, cpu.cpl == 3)
    st.fcw = int.from_bytes(data[0:2], "little") | 0x40
    st.fsw = int.from_bytes(data[unit:unit + 2], "little")
    tags = int.from_bytes(data[2 * unit:2 * unit + 2], "little")
    st.ftw = sum(1 << phys for phys in range(8) if (tags >> (2 * phys)) & 3 != 3)
