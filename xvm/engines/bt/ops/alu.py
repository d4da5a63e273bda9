"""General-purpose integer instructions: arithmetic, logic, shifts, bit ops, BCD, moves.

Each family is one semantic function registered under all its table forms
(`add_Eb_Gb`, `add_Ev_Iz`, ...); the operand forms differ only in where the
operands come from, which `_operand_form` decides once at registration.
Semantics and flag rules: SDM Vol. 2 instruction pages; undefined flags
follow what current Intel parts do where the SDM leaves them open.
"""

from __future__ import annotations

from xvm.engines.bt.decoder.table import ALU_OPS, CC_NAMES, SHIFT_OPS
from xvm.engines.bt.faults import DE, GuestFault
from xvm.engines.bt.ops.common import (
    AF,
    BITS,
    CF,
    MASK,
    NOT_OSZAPC,
    OF,
    SIGN,
    ZF,
    condition,
    ea,
    flags_add,
    flags_logic,
    flags_sub,
    get_r8,
    gp0,
    handles,
    handles_mem,
    mem_linear,
    read_E,
    read_gpr,
    seg_linear,
    set_r8,
    set_reg,
    szp,
    write_E,
    write_gpr,
)
from xvm.engines.bt.state import MODE_LONG

RAX, RCX, RDX = 0, 1, 2


def _size(ins, spec: str) -> int:
    return 1 if spec.endswith("b") or spec == "AL" else ins.opsize


# --- binary ALU: ADD OR ADC SBB AND SUB XOR CMP, TEST ------------------------------

def _add(cpu, a: int, b: int, size: int) -> int:
    return flags_add(cpu, a, b, a + b, size)


def _or(cpu, a: int, b: int, size: int) -> int:
    return flags_logic(cpu, a | b, size)


def _adc(cpu, a: int, b: int, size: int) -> int:
    return flags_add(cpu, a, b, a + b + (cpu.rflags & CF), size)


def _sbb(cpu, a: int, b: int, size: int) -> int:
    return flags_sub(cpu, a, b, a - b - (cpu.rflags & CF), size)


def _and(cpu, a: int, b: int, size: int) -> int:
    return flags_logic(cpu, a & b, size)


def _sub(cpu, a: int, b: int, size: int) -> int:
    return flags_sub(cpu, a, b, a - b, size)


def _xor(cpu, a: int, b: int, size: int) -> int:
    return flags_logic(cpu, a ^ b, size)


#: ALU_OPS order; CMP computes SUB's flags, TEST AND's.
_ALU_FNS = (_add, _or, _adc, _sbb, _and, _sub, _xor, _sub)


def _make_alu(op: int, dst: str, src: str):
    """Handlers for ALU_OPS[op] (8: TEST) with operands dst, src: (register form, memory form or None).

    Operand kinds and byte-ness are decided here, once; the register and
    memory forms are separate functions (the decoder picks one per
    instruction), so the hot path is a few list operations and one flag call.
    """
    byte = dst.endswith("b") or dst == "AL"
    writes = op != 7 and op != 8
    alu = _ALU_FNS[4 if op == 8 else op]
    imm = src[0] == "I"

    if dst[0] == "E" or dst[0] == "G":
        dst_is_rm = dst[0] == "E"

        if byte:
            def reg_form(cpu, mmu, ins, io):
                d = ins.rm if dst_is_rm else ins.reg
                b = ins.imm & 0xFF if imm else get_r8(cpu, ins.reg if dst_is_rm else ins.rm, ins.rex)
                r = alu(cpu, get_r8(cpu, d, ins.rex), b, 1)
                if writes:
                    set_r8(cpu, d, ins.rex, r)
        elif imm:
            def reg_form(cpu, mmu, ins, io):
                size = ins.opsize
                mask = MASK[size]
                regs = cpu.regs
                d = ins.rm
                r = alu(cpu, regs[d] & mask, ins.imm & mask, size)
                if writes:
                    regs[d] = (regs[d] & ~0xFFFF) | r if size == 2 else r
        else:
            def reg_form(cpu, mmu, ins, io):
                size = ins.opsize
                mask = MASK[size]
                regs = cpu.regs
                if dst_is_rm:
                    d = ins.rm
                    b = regs[ins.reg] & mask
                else:
                    d = ins.reg
                    b = regs[ins.rm] & mask
                r = alu(cpu, regs[d] & mask, b, size)
                if writes:
                    regs[d] = (regs[d] & ~0xFFFF) | r if size == 2 else r

        if dst_is_rm:
            def mem_form(cpu, mmu, ins, io):
                size = 1 if byte else ins.opsize
                b = ins.imm & MASK[size] if imm else read_gpr(cpu, ins, ins.reg, size)
                lin = mem_linear(cpu, ins, size, writes)
                user = cpu.cpl == 3
                r = alu(cpu, mmu.read(lin, size, user), b, size)
                if writes:
                    mmu.write(lin, size, r, user)
        else:
            def mem_form(cpu, mmu, ins, io):
                size = 1 if byte else ins.opsize
                b = mmu.read(mem_linear(cpu, ins, size, False), size, cpu.cpl == 3)
                r = alu(cpu, read_gpr(cpu, ins, ins.reg, size), b, size)
                if writes:
                    write_gpr(cpu, ins, ins.reg, size, r)
        return reg_form, mem_form

    def acc_form(cpu, mmu, ins, io):  # AL / rAX, immediate
        size = 1 if byte else ins.opsize
        r = alu(cpu, cpu.regs[RAX] & MASK[size], ins.imm & MASK[size], size)
        if writes:
            write_gpr(cpu, ins, RAX, size, r)
    return acc_form, None


def _register_alu(name: str, op: int, form: str) -> None:
    reg_form, mem_form = _make_alu(op, *form.split("_"))
    handles(f"{name}_{form}")(reg_form)
    if mem_form is not None:
        handles_mem(f"{name}_{form}")(mem_form)


for _n, _name in enumerate(ALU_OPS):
    for _form in ("Eb_Gb", "Ev_Gv", "Gb_Eb", "Gv_Ev", "AL_Ib", "rAX_Iz", "Eb_Ib", "Ev_Iz", "Ev_Ibs"):
        _register_alu(_name, _n, _form)
for _form in ("Eb_Gb", "Ev_Gv", "AL_Ib", "rAX_Iz", "Eb_Ib", "Ev_Iz"):
    _register_alu("test", 8, _form)


# --- unary: INC DEC NOT NEG ----------------------------------------------------------------

def _rmw_E(cpu, mmu, ins, size, fn) -> None:
    """Read-modify-write the r/m operand with fn(cpu, value, size) -> result."""
    if ins.is_mem:
        lin = mem_linear(cpu, ins, size, True)
        user = cpu.cpl == 3
        mmu.write(lin, size, fn(cpu, mmu.read(lin, size, user), size), user)
    else:
        write_gpr(cpu, ins, ins.rm, size, fn(cpu, read_gpr(cpu, ins, ins.rm, size), size))


def _inc(cpu, a: int, size: int) -> int:
    carry = cpu.rflags & CF  # INC/DEC leave CF alone
    r = flags_add(cpu, a, 1, a + 1, size)
    cpu.rflags = (cpu.rflags & ~CF) | carry
    return r


def _dec(cpu, a: int, size: int) -> int:
    carry = cpu.rflags & CF
    r = flags_sub(cpu, a, 1, a - 1, size)
    cpu.rflags = (cpu.rflags & ~CF) | carry
    return r


def _not(cpu, a: int, size: int) -> int:
    return ~a & MASK[size]


def _neg(cpu, a: int, size: int) -> int:
    return flags_sub(cpu, 0, a, -a, size)


for _name, _fn in (("inc", _inc), ("dec", _dec), ("not", _not), ("neg", _neg)):
    def _unary_b(cpu, mmu, ins, io, _fn=_fn):
        _rmw_E(cpu, mmu, ins, 1, _fn)

    def _unary_v(cpu, mmu, ins, io, _fn=_fn):
        _rmw_E(cpu, mmu, ins, ins.opsize, _fn)
    handles(f"{_name}_Eb")(_unary_b)
    handles(f"{_name}_Ev")(_unary_v)


@handles("inc_Zv")
def inc_Zv(cpu, mmu, ins, io):
    size = ins.opsize
    set_reg(cpu, ins.rm, size, _inc(cpu, cpu.regs[ins.rm] & MASK[size], size))


@handles("dec_Zv")
def dec_Zv(cpu, mmu, ins, io):
    size = ins.opsize
    set_reg(cpu, ins.rm, size, _dec(cpu, cpu.regs[ins.rm] & MASK[size], size))


# --- multiply and divide -------------------------------------------------------------------

def _signed(v: int, size: int) -> int:
    return v - (SIGN[size] << 1) if v & SIGN[size] else v


def _mul_flags(cpu, overflow: bool, low: int, size: int) -> None:
    """CF=OF=overflow; SF/ZF/PF from the low half, AF clear (undefined in the SDM)."""
    f = szp(low, size)
    if overflow:
        f |= CF | OF
    cpu.rflags = (cpu.rflags & NOT_OSZAPC) | f


def _store_wide(cpu, size: int, value: int) -> None:
    """AX (byte form) or rDX:rAX (others) = value."""
    if size == 1:
        set_reg(cpu, RAX, 2, value)
    else:
        bits = BITS[size]
        set_reg(cpu, RAX, size, value)
        set_reg(cpu, RDX, size, value >> bits)


def _make_mul(kind: str, byte: bool):
    def h(cpu, mmu, ins, io):
        size = 1 if byte else ins.opsize
        mask = MASK[size]
        src = read_E(cpu, mmu, ins, size)
        a = cpu.regs[RAX] & mask
        if kind == "mul":
            r = a * src
            _store_wide(cpu, size, r)
            _mul_flags(cpu, (r >> BITS[size]) != 0, r & mask, size)
        elif kind == "imul":
            r = _signed(a, size) * _signed(src, size)
            _store_wide(cpu, size, r)
            _mul_flags(cpu, _signed(r & mask, size) != r, r & mask, size)
        else:
            if size == 1:
                dividend = cpu.regs[RAX] & 0xFFFF
            else:
                dividend = ((cpu.regs[RDX] & mask) << BITS[size]) | a
            if src == 0:
                raise GuestFault(DE)
            if kind == "div":
                q, rem = divmod(dividend, src)
                if q > mask:
                    raise GuestFault(DE)
            else:
                n = _signed(dividend, size * 2) if size != 8 else (
                    dividend - (1 << 128) if dividend >> 127 else dividend)
                d = _signed(src, size)
                q = abs(n) // abs(d)
                if (n < 0) != (d < 0):
                    q = -q
                rem = n - q * d
                if q > (mask >> 1) or q < -(mask >> 1) - 1:
                    raise GuestFault(DE)
            if size == 1:
                set_reg(cpu, RAX, 2, (q & 0xFF) | ((rem & 0xFF) << 8))
            else:
                set_reg(cpu, RAX, size, q)
                set_reg(cpu, RDX, size, rem)
    return h


for _kind in ("mul", "imul", "div", "idiv"):
    handles(f"{_kind}_Eb")(_make_mul(_kind, True))
    handles(f"{_kind}_Ev")(_make_mul(_kind, False))


@handles("imul_Gv_Ev", "imul_Gv_Ev_Iz", "imul_Gv_Ev_Ibs")
def imul_Gv_Ev(cpu, mmu, ins, io):
    size = ins.opsize
    mask = MASK[size]
    a = _signed(read_E(cpu, mmu, ins, size), size)
    b = _signed(ins.imm & mask, size) if ins.op.operands[-1][0] == "I" else _signed(cpu.regs[ins.reg] & mask, size)
    r = a * b
    set_reg(cpu, ins.reg, size, r)
    _mul_flags(cpu, _signed(r & mask, size) != r, r & mask, size)


# --- shifts and rotates -------------------------------------------------------------------

def _shift(cpu, op: int, a: int, count: int, size: int) -> int:
    """ROL ROR RCL RCR SHL SHR SAL SAR of a by an already-masked count (SDM Vol. 2 SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR)."""
    bits = BITS[size]
    mask = MASK[size]
    f = cpu.rflags
    if op == 4 or op == 6:  # SHL/SAL
        full = a << count
        r = full & mask
        cf = (full >> bits) & 1
        of = ((r >> (bits - 1)) & 1) ^ cf
        g = szp(r, size) | cf | (of * OF)
        cpu.rflags = (f & NOT_OSZAPC) | g
        return r
    if op == 5:  # SHR
        r = a >> count
        cf = (a >> (count - 1)) & 1
        g = szp(r, size) | cf | (OF if (a >> (bits - 1)) & 1 and count == 1 else 0)
        cpu.rflags = (f & NOT_OSZAPC) | g
        return r
    if op == 7:  # SAR
        s = _signed(a, size)
        r = (s >> count) & mask
        cf = (s >> (count - 1)) & 1 if count <= bits else (1 if s < 0 else 0)
        cpu.rflags = (f & NOT_OSZAPC) | szp(r, size) | cf
        return r
    # Rotates touch only CF and OF.
    if op == 0:  # ROL
        n = count % bits
        r = ((a << n) | (a >> (bits - n))) & mask
        cf = r & 1
        of = ((r >> (bits - 1)) & 1) ^ cf
    elif op == 1:  # ROR
        n = count % bits
        r = ((a >> n) | (a << (bits - n))) & mask
        cf = (r >> (bits - 1)) & 1
        of = cf ^ ((r >> (bits - 2)) & 1)
    elif op == 2:  # RCL: rotate the (bits+1)-bit value CF:a
        n = count % (bits + 1)
        wide = a | ((f & CF) << bits)
        wide = ((wide << n) | (wide >> (bits + 1 - n))) & ((mask << 1) | 1)
        r = wide & mask
        cf = wide >> bits
        of = ((r >> (bits - 1)) & 1) ^ cf
    else:  # RCR
        n = count % (bits + 1)
        wide = a | ((f & CF) << bits)
        wide = ((wide >> n) | (wide << (bits + 1 - n))) & ((mask << 1) | 1)
        r = wide & mask
        cf = wide >> bits
        of = ((r >> (bits - 1)) ^ (r >> (bits - 2))) & 1
    cpu.rflags = (f & ~(CF | OF)) | cf | (of * OF)
    return r


def _zero_count(cpu, mmu, ins, size: int) -> None:
    """A shift whose masked count is 0 changes no flags but still accesses its operand, and a 32-bit
    register destination is still written, so it is zero-extended (what x86-64 hardware does)."""
    value = read_E(cpu, mmu, ins, size)
    if size == 4 and not ins.is_mem:
        set_reg(cpu, ins.rm, 4, value)


def _make_shift(op: int, byte: bool, src: str):
    def h(cpu, mmu, ins, io):
        size = 1 if byte else ins.opsize
        if src == "1":
            count = 1
        elif src == "C":
            count = cpu.regs[RCX] & (0x3F if size == 8 else 0x1F)
        else:
            count = ins.imm & (0x3F if size == 8 else 0x1F)
        if count == 0:
            _zero_count(cpu, mmu, ins, size)
            return
        _rmw_E(cpu, mmu, ins, size, lambda c, a, s: _shift(c, op, a, count, s))
    return h


for _n, _name in enumerate(SHIFT_OPS):
    for _form in ("Eb_Ib", "Ev_Ib", "Eb_1", "Ev_1", "Eb_CL", "Ev_CL"):
        handles(f"{_name}_{_form}")(_make_shift(_n, _form[1] == "b", _form.split("_")[1][0]))


def _make_double_shift(left: bool, by_cl: bool):
    def h(cpu, mmu, ins, io):
        size = ins.opsize
        bits = BITS[size]
        mask = MASK[size]
        count = (cpu.regs[RCX] if by_cl else ins.imm) & (0x3F if size == 8 else 0x1F)
        if count == 0:
            _zero_count(cpu, mmu, ins, size)
            return
        fill = cpu.regs[ins.reg] & mask

        def op(c, a, s):
            if left:
                full = ((a << bits) | fill) << count
                r = (full >> bits) & mask
                cf = (full >> (2 * bits)) & 1
            else:
                full = (fill << bits) | a
                r = (full >> count) & mask
                cf = (full >> (count - 1)) & 1
            of = ((r ^ a) >> (bits - 1)) & 1
            c.rflags = (c.rflags & NOT_OSZAPC) | szp(r, s) | cf | (of * OF)
            return r
        _rmw_E(cpu, mmu, ins, size, op)
    return h


handles("shld_Ev_Gv_Ib")(_make_double_shift(True, False))
handles("shld_Ev_Gv_CL")(_make_double_shift(True, True))
handles("shrd_Ev_Gv_Ib")(_make_double_shift(False, False))
handles("shrd_Ev_Gv_CL")(_make_double_shift(False, True))


# --- bit test and scan -------------------------------------------------------------------

def _make_bt(kind: str, imm: bool):
    """BT/BTS/BTR/BTC: a register bit offset reaches beyond a memory operand (SDM Vol. 2 BT)."""
    def h(cpu, mmu, ins, io):
        size = ins.opsize
        bits = BITS[size]
        if imm:
            offset = ins.imm & (bits - 1)
            adjust = 0
        else:
            raw = cpu.regs[ins.reg] & MASK[size]
            if ins.is_mem:
                signed = _signed(raw, size)
                adjust = (signed >> (bits.bit_length() - 1)) * size
                offset = signed & (bits - 1)
            else:
                adjust = 0
                offset = raw & (bits - 1)
        if ins.is_mem:
            user = cpu.cpl == 3
            lin = seg_linear(cpu, ins.seg, (ea(cpu, ins) + adjust) & ins.addr_mask, size, kind != "bt")
            value = mmu.read(lin, size, user)
        else:
            value = cpu.regs[ins.rm] & MASK[size]
        bit = (value >> offset) & 1
        cpu.rflags = (cpu.rflags & ~CF) | bit
        if kind == "bt":
            return
        if kind == "bts":
            value |= 1 << offset
        elif kind == "btr":
            value &= ~(1 << offset)
        else:
            value ^= 1 << offset
        if ins.is_mem:
            mmu.write(lin, size, value, user)
        else:
            set_reg(cpu, ins.rm, size, value)
    return h


for _kind in ("bt", "bts", "btr", "btc"):
    handles(f"{_kind}_Ev_Gv")(_make_bt(_kind, False))
    handles(f"{_kind}_Ev_Ib")(_make_bt(_kind, True))


@handles("bsf_Gv_Ev", "bsr_Gv_Ev")
def bsf_Gv_Ev(cpu, mmu, ins, io):
    """Source 0: ZF=1 and the destination is left unchanged (as Intel and AMD parts do)."""
    size = ins.opsize
    src = read_E(cpu, mmu, ins, size)
    if src == 0:
        cpu.rflags |= ZF
        return
    cpu.rflags &= ~ZF
    index = (src & -src).bit_length() - 1 if ins.op.mnemonic == "bsf" else src.bit_length() - 1
    set_reg(cpu, ins.reg, size, index)


# --- BCD (SDM Vol. 2 DAA, DAS, AAA, AAS, AAM, AAD) ----------------------------------

@handles("daa", "das")
def daa(cpu, mmu, ins, io):
    f = cpu.rflags
    al = cpu.regs[RAX] & 0xFF
    old_al, old_cf = al, f & CF
    sub = ins.op.mnemonic == "das"
    cf = 0
    af = 0
    if (al & 0xF) > 9 or f & AF:
        t = al - 6 if sub else al + 6
        cf = old_cf | (1 if (t < 0 or t > 0xFF) else 0)
        al = t & 0xFF
        af = AF
    if old_al > 0x99 or old_cf:
        al = (al - 0x60 if sub else al + 0x60) & 0xFF
        cf = CF
    set_r8(cpu, RAX, 0, al)
    cpu.rflags = (f & NOT_OSZAPC) | szp(al, 1) | cf | af


@handles("aaa", "aas")
def aaa(cpu, mmu, ins, io):
    f = cpu.rflags
    ax = cpu.regs[RAX] & 0xFFFF
    if (ax & 0xF) > 9 or f & AF:
        ax = (ax - 6 - 0x100) if ins.op.mnemonic == "aas" else (ax + 0x106)
        ax &= 0xFFFF
        g = AF | CF
    else:
        g = 0
    ax &= 0xFF0F
    set_reg(cpu, RAX, 2, ax)
    cpu.rflags = (f & NOT_OSZAPC) | g | szp(ax & 0xFF, 1)


@handles("aam_Ib")
def aam_Ib(cpu, mmu, ins, io):
    if ins.imm == 0:
        raise GuestFault(DE)
    al = cpu.regs[RAX] & 0xFF
    ah, al = divmod(al, ins.imm)
    set_reg(cpu, RAX, 2, (ah << 8) | al)
    cpu.rflags = (cpu.rflags & NOT_OSZAPC) | szp(al, 1)


@handles("aad_Ib")
def aad_Ib(cpu, mmu, ins, io):
    ax = cpu.regs[RAX]
    al = ax & 0xFF
    b = ((ax >> 8) & 0xFF) * ins.imm & 0xFF
    r = flags_add(cpu, al, b, al + b, 1)  # flags as the 8-bit addition the microcode performs
    set_reg(cpu, RAX, 2, r)


@handles("salc")
def salc(cpu, mmu, ins, io):
    set_r8(cpu, RAX, 0, 0xFF if cpu.rflags & CF else 0)


# --- data movement -------------------------------------------------------------------

@handles("mov_Eb_Gb", "mov_Gb_Eb")
def mov_b_reg(cpu, mmu, ins, io):
    src, dst = (ins.reg, ins.rm) if ins.op.operands[0] == "Eb" else (ins.rm, ins.reg)
    set_r8(cpu, dst, ins.rex, get_r8(cpu, src, ins.rex))


@handles("mov_Ev_Gv", "mov_Gv_Ev")
def mov_v_reg(cpu, mmu, ins, io):
    size = ins.opsize
    regs = cpu.regs
    src, dst = (ins.reg, ins.rm) if ins.op.operands[0] == "Ev" else (ins.rm, ins.reg)
    if size == 2:
        regs[dst] = (regs[dst] & ~0xFFFF) | (regs[src] & 0xFFFF)
    else:
        regs[dst] = regs[src] & MASK[size]


@handles_mem("mov_Eb_Gb")
def mov_Mb_Gb(cpu, mmu, ins, io):
    mmu.write(mem_linear(cpu, ins, 1, True), 1, get_r8(cpu, ins.reg, ins.rex), cpu.cpl == 3)


@handles_mem("mov_Ev_Gv")
def mov_Mv_Gv(cpu, mmu, ins, io):
    size = ins.opsize
    mmu.write(mem_linear(cpu, ins, size, True), size, cpu.regs[ins.reg] & MASK[size], cpu.cpl == 3)


@handles_mem("mov_Gb_Eb")
def mov_Gb_Mb(cpu, mmu, ins, io):
    set_r8(cpu, ins.reg, ins.rex, mmu.read(mem_linear(cpu, ins, 1, False), 1, cpu.cpl == 3))


@handles_mem("mov_Gv_Ev")
def mov_Gv_Mv(cpu, mmu, ins, io):
    size = ins.opsize
    value = mmu.read(mem_linear(cpu, ins, size, False), size, cpu.cpl == 3)
    regs = cpu.regs
    r = ins.reg
    regs[r] = (regs[r] & ~0xFFFF) | value if size == 2 else value


@handles("mov_Eb_Ib")
def mov_Eb_Ib(cpu, mmu, ins, io):
    write_E(cpu, mmu, ins, 1, ins.imm)


@handles("mov_Ev_Iz")
def mov_Ev_Iz(cpu, mmu, ins, io):
    write_E(cpu, mmu, ins, ins.opsize, ins.imm)


@handles("mov_Zb_Ib")
def mov_Zb_Ib(cpu, mmu, ins, io):
    set_r8(cpu, ins.rm, ins.rex, ins.imm)


@handles("mov_Zv_Iv")
def mov_Zv_Iv(cpu, mmu, ins, io):
    set_reg(cpu, ins.rm, ins.opsize, ins.imm)


@handles("mov_AL_Ob", "mov_rAX_Ov", "mov_Ob_AL", "mov_Ov_rAX")
def mov_moffs(cpu, mmu, ins, io):
    ops = ins.op.operands
    size = 1 if "AL" in ops else ins.opsize
    store = ops[0][0] == "O"
    lin = seg_linear(cpu, ins.seg, ins.imm & ins.addr_mask, size, store)
    if store:
        mmu.write(lin, size, cpu.regs[RAX] & MASK[size], cpu.cpl == 3)
    else:
        write_gpr(cpu, ins, RAX, size, mmu.read(lin, size, cpu.cpl == 3))


@handles("movzx_Gv_Eb")
def movzx_Gv_Eb(cpu, mmu, ins, io):
    set_reg(cpu, ins.reg, ins.opsize, read_E(cpu, mmu, ins, 1))


@handles("movzx_Gv_Ew")
def movzx_Gv_Ew(cpu, mmu, ins, io):
    set_reg(cpu, ins.reg, ins.opsize, read_E(cpu, mmu, ins, 2))


@handles("movsx_Gv_Eb", "movsx_Gv_Ew", "movsxd_Gv_Ez")
def movsx(cpu, mmu, ins, io):
    spec = ins.op.operands[1]
    src_size = 1 if spec == "Eb" else 2 if spec == "Ew" or ins.opsize == 2 else 4
    set_reg(cpu, ins.reg, ins.opsize, _signed(read_E(cpu, mmu, ins, src_size), src_size))


@handles("lea_Gv_M")
def lea_Gv_M(cpu, mmu, ins, io):
    set_reg(cpu, ins.reg, ins.opsize, ea(cpu, ins))


@handles("xchg_Eb_Gb", "xchg_Ev_Gv")
def xchg_E_G(cpu, mmu, ins, io):
    size = 1 if ins.op.operands[0] == "Eb" else ins.opsize
    b = read_gpr(cpu, ins, ins.reg, size)
    if ins.is_mem:
        lin = mem_linear(cpu, ins, size, True)
        user = cpu.cpl == 3
        a = mmu.read(lin, size, user)
        mmu.write(lin, size, b, user)
    else:
        a = read_gpr(cpu, ins, ins.rm, size)
        write_gpr(cpu, ins, ins.rm, size, b)
    write_gpr(cpu, ins, ins.reg, size, a)


@handles("xchg_Zv_rAX")
def xchg_Zv_rAX(cpu, mmu, ins, io):
    size = ins.opsize
    a = cpu.regs[ins.rm] & MASK[size]
    set_reg(cpu, ins.rm, size, cpu.regs[RAX])
    set_reg(cpu, RAX, size, a)


@handles("cmpxchg_Eb_Gb", "cmpxchg_Ev_Gv")
def cmpxchg(cpu, mmu, ins, io):
    """A memory destination is written in both outcomes (SDM Vol. 2 CMPXCHG), so a read-only page faults.

    A register destination is left alone when the compare fails, upper half included: that is what
    the hardware does (checked natively by tests/unit/engines/bt/test_exec_native.py; FEX and VEX
    model it the same way). KVM's instruction emulator (em_cmpxchg) writes it back zero-extended.
    """
    size = 1 if ins.op.operands[0] == "Eb" else ins.opsize
    acc = cpu.regs[RAX] & MASK[size]
    if ins.is_mem:
        lin = mem_linear(cpu, ins, size, True)
        user = cpu.cpl == 3
        dest = mmu.read(lin, size, user)
        flags_sub(cpu, acc, dest, acc - dest, size)
        if acc == dest:
            mmu.write(lin, size, read_gpr(cpu, ins, ins.reg, size), user)
        else:
            mmu.write(lin, size, dest, user)
            write_gpr(cpu, ins, RAX, size, dest)
    else:
        dest = read_gpr(cpu, ins, ins.rm, size)
        flags_sub(cpu, acc, dest, acc - dest, size)
        if acc == dest:
            write_gpr(cpu, ins, ins.rm, size, read_gpr(cpu, ins, ins.reg, size))
        else:
            write_gpr(cpu, ins, RAX, size, dest)


@handles("xadd_Eb_Gb", "xadd_Ev_Gv")
def xadd(cpu, mmu, ins, io):
    size = 1 if ins.op.operands[0] == "Eb" else ins.opsize
    b = read_gpr(cpu, ins, ins.reg, size)
    if ins.is_mem:
        lin = mem_linear(cpu, ins, size, True)
        user = cpu.cpl == 3
        a = mmu.read(lin, size, user)
        r = flags_add(cpu, a, b, a + b, size)
        mmu.write(lin, size, r, user)
        write_gpr(cpu, ins, ins.reg, size, a)
    else:
        a = read_gpr(cpu, ins, ins.rm, size)
        r = flags_add(cpu, a, b, a + b, size)
        write_gpr(cpu, ins, ins.reg, size, a)
        write_gpr(cpu, ins, ins.rm, size, r)


@handles("cmpxchg8b_Mq", "cmpxchg16b_Mdq")
def cmpxchg8b(cpu, mmu, ins, io):
    half = 8 if ins.op.mnemonic == "cmpxchg16b" else 4
    off = ea(cpu, ins)
    if half == 8 and off & 15:
        raise gp0()  # CMPXCHG16B needs a 16-byte aligned operand
    lin = seg_linear(cpu, ins.seg, off, half * 2, True)
    user = cpu.cpl == 3
    mask = MASK[half]
    bits = half * 8
    old = mmu.read(lin, half, user) | (mmu.read(lin + half, half, user) << bits)
    regs = cpu.regs
    if old == ((regs[RDX] & mask) << bits) | (regs[RAX] & mask):
        new = ((regs[RCX] & mask) << bits) | (regs[3] & mask)
        mmu.write(lin, half, new & mask, user)
        mmu.write(lin + half, half, new >> bits, user)
        cpu.rflags |= ZF
    else:
        mmu.write(lin, half, old & mask, user)
        mmu.write(lin + half, half, old >> bits, user)
        set_reg(cpu, RAX, half, old & mask)
        set_reg(cpu, RDX, half, old >> bits)
        cpu.rflags &= ~ZF


@handles("bswap_Zv")
def bswap_Zv(cpu, mmu, ins, io):
    """BSWAP r16 is undefined; it clears the register's low word, as Intel parts and Bochs do."""
    size = ins.opsize
    value = cpu.regs[ins.rm] & MASK[size]
    set_reg(cpu, ins.rm, size, int.from_bytes(value.to_bytes(size, "little"), "big") if size != 2 else 0)


@handles("cbw")
def cbw(cpu, mmu, ins, io):
    size = ins.opsize
    half = size >> 1
    set_reg(cpu, RAX, size, _signed(cpu.regs[RAX] & MASK[half], half))


@handles("cwd")
def cwd(cpu, mmu, ins, io):
    size = ins.opsize
    set_reg(cpu, RDX, size, MASK[size] if cpu.regs[RAX] & SIGN[size] else 0)


@handles("lahf")
def lahf(cpu, mmu, ins, io):
    set_r8(cpu, 4, 0, cpu.rflags & 0xD7 | 2)


@handles("sahf")
def sahf(cpu, mmu, ins, io):
    ah = (cpu.regs[RAX] >> 8) & 0xD5
    cpu.rflags = (cpu.rflags & ~0xD5) | ah


@handles("clc", "stc", "cmc", "cld", "std")
def flag_op(cpu, mmu, ins, io):
    m = ins.op.mnemonic
    if m == "clc":
        cpu.rflags &= ~CF
    elif m == "stc":
        cpu.rflags |= CF
    elif m == "cmc":
        cpu.rflags ^= CF
    elif m == "cld":
        cpu.rflags &= ~0x400
    else:
        cpu.rflags |= 0x400


@handles("xlatb")
def xlatb(cpu, mmu, ins, io):
    off = (cpu.regs[3] + (cpu.regs[RAX] & 0xFF)) & ins.addr_mask
    set_r8(cpu, RAX, 0, mmu.read(seg_linear(cpu, ins.seg, off, 1, False), 1, cpu.cpl == 3))


@handles("nop", "pause", "nop_Ev", "reservednop_Ev_Gv", "endbr64", "endbr32", "prefetch_Mb", "prefetchw_Mb",
         "prefetchwt1_Mb", "prefetchnta_Mb", "prefetcht0_Mb", "prefetcht1_Mb", "prefetcht2_Mb", "lfence", "mfence",
         "sfence")
def nop(cpu, mmu, ins, io):
    """No architectural effect (hints, CET markers without CET, fences: this CPU model is strongly ordered)."""


@handles("clflush_Mb")
def clflush_Mb(cpu, mmu, ins, io):
    """No cache to flush, but the address is still checked like a byte read (SDM Vol. 2 CLFLUSH)."""
    mmu.translate(mem_linear(cpu, ins, 1, False), 0, cpu.cpl == 3)


@handles("bound_Gv_Ma")
def bound_Gv_Ma(cpu, mmu, ins, io):
    size = ins.opsize
    off = ea(cpu, ins)
    user = cpu.cpl == 3
    lower = _signed(mmu.read(seg_linear(cpu, ins.seg, off, size, False), size, user), size)
    upper = _signed(mmu.read(seg_linear(cpu, ins.seg, (off + size) & ins.addr_mask, size, False), size, user),
                    size)
    index = _signed(cpu.regs[ins.reg] & MASK[size], size)
    if index < lower or index > upper:
        raise GuestFault(5)  # #BR


# --- conditional moves and sets ---------------------------------------------------

for _cc, _name in enumerate(CC_NAMES):
    def _setcc(cpu, mmu, ins, io, _cc=_cc):
        write_E(cpu, mmu, ins, 1, 1 if condition(cpu.rflags, _cc) else 0)

    def _cmovcc(cpu, mmu, ins, io, _cc=_cc):
        size = ins.opsize
        value = read_E(cpu, mmu, ins, size)  # the source is read even when the condition fails
        if condition(cpu.rflags, _cc):
            set_reg(cpu, ins.reg, size, value)
        elif size == 4 and cpu.mode == MODE_LONG:
            set_reg(cpu, ins.reg, 4, cpu.regs[ins.reg])  # 32-bit CMOVcc zero-extends in either case
    handles(f"set{_name}_Eb")(_setcc)
    handles(f"cmov{_name}_Gv_Ev")(_cmovcc)

