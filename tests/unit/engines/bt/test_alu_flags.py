"""Exact flags of the ALU families in 32- and 64-bit mode.

Each instruction runs through the interpreter (decoder and handler) and is
checked against a reference written from the SDM's flag definitions in a
different way (signed/unsigned range checks, nibble arithmetic for AF),
with hypothesis choosing operands, plus hand-computed cases.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.engines.bt.test_exec_harness import SparseMmu, fault_of, make_cpu, run_code

from xvm.engines.bt.faults import DE

CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
ARITH = CF | PF | AF | ZF | SF | OF
REX_W = 0x48
#: ALU opcode (Ev,Gv form; Eb,Gb is one less) by mnemonic.
ALU = {"add": 0x01, "or": 0x09, "adc": 0x11, "sbb": 0x19, "and": 0x21, "sub": 0x29, "xor": 0x31, "cmp": 0x39}


def encode(opcode_v: int, size: int, modrm: int, bits: int) -> bytes:
    """Opcode for size 1/2/4/8 with the right prefixes; byte forms use opcode_v - 1."""
    if size == 1:
        return bytes([opcode_v - 1, modrm])
    prefix = b"\x66" if size == 2 else b"\x48" if size == 8 else b""
    return prefix + bytes([opcode_v, modrm])


def signed(v: int, size: int) -> int:
    bits = size * 8
    return v - (1 << bits) if v >> (bits - 1) else v


def ref_flags(result: int, size: int, carry: bool, overflow: bool, aux: bool) -> int:
    mask = (1 << (size * 8)) - 1
    r = result & mask
    f = (CF if carry else 0) | (OF if overflow else 0) | (AF if aux else 0)
    f |= ZF if r == 0 else 0
    f |= SF if r >> (size * 8 - 1) else 0
    f |= PF if bin(r & 0xFF).count("1") % 2 == 0 else 0
    return f


def reference(op: str, a: int, b: int, cf: int, size: int) -> tuple[int, int]:
    """(result, OSZAPC) from the definitions: CF unsigned overflow, OF signed overflow, AF nibble carry."""
    bits = size * 8
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if op in ("add", "adc"):
        c = cf if op == "adc" else 0
        u = a + b + c
        s = signed(a, size) + signed(b, size) + c
        return u, ref_flags(u, size, u >= 1 << bits, not lo <= s <= hi, (a & 0xF) + (b & 0xF) + c > 0xF)
    if op in ("sub", "sbb", "cmp"):
        c = cf if op == "sbb" else 0
        u = a - b - c
        s = signed(a, size) - signed(b, size) - c
        return u, ref_flags(u, size, u < 0, not lo <= s <= hi, (a & 0xF) - (b & 0xF) - c < 0)
    r = {"and": a & b, "or": a | b, "xor": a ^ b}[op]
    return r, ref_flags(r, size, False, False, False)


SIZES = [(1, 32), (2, 32), (4, 32), (1, 64), (2, 64), (4, 64), (8, 64)]


def operand(size: int):
    return st.integers(0, (1 << (size * 8)) - 1)


@pytest.mark.parametrize("op", sorted(ALU))
@pytest.mark.parametrize("size,bits", SIZES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_binary_alu_flags(op, size, bits, data):
    a = data.draw(operand(size))
    b = data.draw(operand(size))
    cf = data.draw(st.integers(0, 1))
    cpu = make_cpu(bits)
    cpu.regs[0] = a | (0x1234567800000000 if bits == 64 and size < 4 else 0)
    cpu.regs[1] = b
    cpu.rflags = 2 | cf
    run_code(cpu, SparseMmu(), encode(ALU[op], size, 0xC8, bits))  # op rAX, rCX
    result, flags = reference(op, a, b, cf, size)
    mask = (1 << (size * 8)) - 1
    assert cpu.rflags & ARITH == flags
    expected = a if op == "cmp" else result & mask
    assert cpu.regs[0] & mask == expected
    if size == 4 and op != "cmp":
        assert cpu.regs[0] >> 32 == 0  # 32-bit results zero-extend
    elif size < 4 and bits == 64:
        assert cpu.regs[0] >> 32 == 0x12345678  # 8/16-bit results keep the rest


@pytest.mark.parametrize("size,bits", SIZES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_inc_dec_neg_not(size, bits, data):
    a = data.draw(operand(size))
    cf = data.draw(st.integers(0, 1))
    mask = (1 << (size * 8)) - 1
    for digit, op in ((0, "inc"), (1, "dec"), (3, "neg"), (2, "not")):
        cpu = make_cpu(bits)
        cpu.regs[0] = a
        cpu.rflags = 2 | cf
        opcode = 0xFF if op in ("inc", "dec") else 0xF7
        run_code(cpu, SparseMmu(), encode(opcode, size, 0xC0 | (digit << 3), bits))
        if op == "inc":
            result, flags = reference("add", a, 1, 0, size)
            flags = (flags & ~CF) | cf  # INC/DEC keep CF
        elif op == "dec":
            result, flags = reference("sub", a, 1, 0, size)
            flags = (flags & ~CF) | cf
        elif op == "neg":
            result, flags = reference("sub", 0, a, 0, size)
        else:
            result, flags = ~a, cf  # NOT changes no flags
        assert cpu.regs[0] & mask == result & mask, op
        assert cpu.rflags & ARITH == flags, op


@pytest.mark.parametrize("size,bits", [(1, 32), (2, 32), (4, 32), (8, 64)])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_shifts(size, bits, data):
    a = data.draw(operand(size))
    count = data.draw(st.integers(0, 255))
    cf = data.draw(st.integers(0, 1))
    width = size * 8
    mask = (1 << width) - 1
    masked = count & (0x3F if size == 8 else 0x1F)
    for digit, op in enumerate(("rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar")):
        cpu = make_cpu(bits)
        cpu.regs[0] = a
        cpu.regs[1] = count
        cpu.rflags = 2 | cf | OF
        run_code(cpu, SparseMmu(), encode(0xD3, size, 0xC0 | (digit << 3), bits))  # op rAX, CL
        got, flags = cpu.regs[0] & mask, cpu.rflags
        if masked == 0:
            assert got == a and flags == 2 | cf | OF, op
            continue
        if op in ("shl", "sal"):
            full = a << masked
            exp, exp_cf = full & mask, (full >> width) & 1
        elif op == "shr":
            exp, exp_cf = a >> masked, (a >> (masked - 1)) & 1
        elif op == "sar":
            s = signed(a, size)
            exp, exp_cf = (s >> masked) & mask, (s >> (masked - 1)) & 1
        elif op in ("rol", "ror"):
            n = masked % width
            v = a
            for _ in range(n):
                v = ((v << 1) | (v >> (width - 1))) & mask if op == "rol" else ((v >> 1) | ((v & 1) << (width - 1)))
            exp = v
            exp_cf = (v & 1) if op == "rol" else (v >> (width - 1)) & 1
        else:
            v, c = a, cf
            for _ in range(masked % (width + 1)):
                if op == "rcl":
                    v, c = ((v << 1) | c) & mask, v >> (width - 1)
                else:
                    v, c = (v >> 1) | (c << (width - 1)), v & 1
            exp, exp_cf = v, c
        assert got == exp, op
        assert flags & CF == exp_cf, op
        if op in ("shl", "sal", "shr", "sar"):
            szp = ref_flags(exp, size, False, False, False)
            assert flags & (SF | ZF | PF) == szp, op
        if masked == 1:
            msb = (exp >> (width - 1)) & 1
            exp_of = {"shl": msb ^ exp_cf, "sal": msb ^ exp_cf, "shr": (a >> (width - 1)) & 1, "sar": 0,
                      "rol": msb ^ exp_cf, "rcl": msb ^ exp_cf,
                      "ror": msb ^ ((exp >> (width - 2)) & 1), "rcr": msb ^ ((exp >> (width - 2)) & 1)}[op]
            assert bool(flags & OF) == bool(exp_of), op


@pytest.mark.parametrize("size,bits", [(1, 32), (2, 32), (4, 32), (8, 64)])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_mul_div(size, bits, data):
    a = data.draw(operand(size))
    d = data.draw(operand(size))
    src = data.draw(operand(size))
    width = size * 8
    mask = (1 << width) - 1

    def setup():
        cpu = make_cpu(bits)
        cpu.regs[0], cpu.regs[2], cpu.regs[1] = a, d, src
        return cpu

    # MUL / IMUL rCX: CF=OF when the high half is significant
    cpu = setup()
    run_code(cpu, SparseMmu(), encode(0xF7, size, 0xE1, bits))
    product = a * src
    low, high = (cpu.regs[0] & 0xFF, (cpu.regs[0] >> 8) & 0xFF) if size == 1 else (cpu.regs[0] & mask,
                                                                                   cpu.regs[2] & mask)
    assert (high << width) | low == product
    assert bool(cpu.rflags & CF) == bool(cpu.rflags & OF) == (product >> width != 0)
    cpu = setup()
    run_code(cpu, SparseMmu(), encode(0xF7, size, 0xE9, bits))
    sproduct = signed(a, size) * signed(src, size)
    low, high = (cpu.regs[0] & 0xFF, (cpu.regs[0] >> 8) & 0xFF) if size == 1 else (cpu.regs[0] & mask,
                                                                                   cpu.regs[2] & mask)
    assert (high << width) | low == sproduct & ((1 << (2 * width)) - 1)
    assert bool(cpu.rflags & CF) == (signed(sproduct & mask, size) != sproduct)

    # DIV / IDIV rCX: quotient/remainder or #DE with nothing changed
    dividend = (a & 0xFFFF) if size == 1 else (d << width) | a
    for digit, is_signed in ((6, False), (7, True)):
        cpu = setup()
        before = list(cpu.regs)
        if is_signed:
            n, m = signed(dividend, size * 2), signed(src, size)
            ok = m != 0 and -(1 << (width - 1)) <= int(n / m) if m else False
            q = abs(n) // abs(m) * (1 if (n < 0) == (m < 0) else -1) if m else 0
            ok = m != 0 and -(1 << (width - 1)) <= q < (1 << (width - 1))
            r = n - q * m if m else 0
        else:
            ok = src != 0 and dividend // src <= mask
            q, r = (divmod(dividend, src) if src else (0, 0))
        code = encode(0xF7, size, 0xC1 | (digit << 3), bits)
        if not ok:
            fault = fault_of(cpu, SparseMmu(), code)
            assert fault.vector == DE and cpu.regs == before and cpu.rip == 0x10000
            continue
        run_code(cpu, SparseMmu(), code)
        if size == 1:
            assert cpu.regs[0] & 0xFFFF == ((r & 0xFF) << 8) | (q & 0xFF)
        else:
            assert (cpu.regs[0] & mask, cpu.regs[2] & mask) == (q & mask, r & mask)


@pytest.mark.parametrize("code,rax,rcx,flags_in,rax_out,flags_out", [
    ("00c8", 0x7F, 0x01, 0, 0x80, OF | SF | AF),                  # add al, cl: signed overflow
    ("00c8", 0xFF, 0x01, 0, 0x00, CF | ZF | AF | PF),             # add al, cl: carry, zero
    ("28c8", 0x00, 0x01, 0, 0xFF, CF | SF | AF | PF),             # sub al, cl: borrow
    ("4801c8", 1 << 63, 1 << 63, 0, 0, CF | OF | ZF | PF),        # add rax, rcx
    ("4819c8", 0, 0, CF, (1 << 64) - 1, CF | SF | AF | PF),       # sbb rax, rcx with CF
    ("27", 0x0F, 0, 0, 0x15, AF),                                 # daa
    ("3f", 0x0F, 0, 0, 0x09, AF | CF),                            # aas: AL=09, AH-1 (32-bit mode only)
])
def test_hand_computed(code, rax, rcx, flags_in, rax_out, flags_out):
    bits = 32 if code in ("27", "3f") else 64
    cpu = make_cpu(bits)
    cpu.regs[0], cpu.regs[1] = rax, rcx
    cpu.rflags = 2 | flags_in
    run_code(cpu, SparseMmu(), bytes.fromhex(code))
    mask = 0xFF if len(code) == 4 or bits == 32 else (1 << 64) - 1
    assert cpu.regs[0] & mask == rax_out & mask
    assert cpu.rflags & (flags_out | CF | OF | ZF) == flags_out
