"""x87: the register stack, loads/stores in every format, arithmetic forms, compares, classification, env."""

from __future__ import annotations

import struct

from unit.engines.bt.test_exec_harness import SparseMmu, make_cpu, run_code

from xvm.engines.bt.ops.x87 import C0, C1, C2, C3, from_ext, to_ext

DATA = 0x6000


def machine(**doubles):
    cpu = make_cpu(32)
    mmu = SparseMmu()
    for i, value in enumerate(doubles.values()):
        mmu.write_bytes(DATA + 8 * i, struct.pack("<d", value), False)
    cpu.regs[3] = DATA  # ebx
    return cpu, mmu


def fld(i: int) -> str:
    """fld qword [ebx + 8*i]"""
    return f"dd43{8 * i:02x}"


def fstp(i: int) -> str:
    """fstp qword [ebx + 8*i]"""
    return f"dd5b{8 * i:02x}"


def result(mmu, i: int) -> float:
    return struct.unpack("<d", mmu.read_bytes(DATA + 8 * i, 8, False))[0]


def test_extended_images_round_trip():
    for x in (0.0, -0.0, 1.0, -2.5, 1e300, 5e-324, float("inf"), -float("inf")):
        assert from_ext(to_ext(x)) == x and str(from_ext(to_ext(x))) == str(x)
    assert to_ext(1.0) == bytes.fromhex("0000000000000080ff3f")  # 1.0 = 3FFF:8000000000000000


def test_arithmetic_forms_and_reversed_operands():
    cpu, mmu = machine(a=10.0, b=4.0)
    # fld a; fld b: ST0=4, ST1=10. fsub st(1),st -> ST1 = 10-4; fsubr st(1),st -> ST1 = ST0-ST1
    run_code(cpu, mmu, bytes.fromhex(fld(0) + fld(1) + "dce9" + fstp(2) + fstp(3)))
    assert result(mmu, 2) == 4.0 and result(mmu, 3) == 6.0
    cpu, mmu = machine(a=10.0, b=4.0)
    run_code(cpu, mmu, bytes.fromhex(fld(0) + fld(1) + "dee1" + fstp(2)))  # fsubrp st(1),st: ST0-ST1 = -6
    assert result(mmu, 2) == -6.0
    cpu, mmu = machine(a=10.0, b=4.0)
    run_code(cpu, mmu, bytes.fromhex(fld(0) + "dc7308" + fstp(2)))  # fdiv qword [ebx+8]: 10/4
    assert result(mmu, 2) == 2.5
    cpu, mmu = machine(a=10.0, b=4.0)
    run_code(cpu, mmu, bytes.fromhex(fld(0) + "d8f9" + fstp(2)))  # fdivr st,st(1) with ST1 empty: indefinite
    assert result(mmu, 2) != result(mmu, 2)  # NaN


def test_integer_loads_stores_and_rounding_control():
    cpu, mmu = machine(x=2.5, y=-2.5)
    mmu.write(DATA + 0x40, 2, 0x0F7F, False)  # a control word with RC = 3 (truncate)
    code = (fld(0) + "db5b10" +               # fistp dword [ebx+16]: 2.5 -> 2 (nearest-even)
            fld(1) + "db5b14" +               # -2.5 -> -2
            "d96b40" + fld(0) + "db5b18" +    # fldcw; 2.5 truncated -> 2
            "df4320" + "dd5b28")              # fild word [ebx+32] (0); fstp
    mmu.write(DATA + 0x20, 2, 0xFFF9, False)  # -7
    run_code(cpu, mmu, bytes.fromhex(code))
    assert mmu.read(DATA + 0x10, 4, False) == 2
    assert mmu.read(DATA + 0x14, 4, False) == (-2) & 0xFFFFFFFF
    assert mmu.read(DATA + 0x18, 4, False) == 2
    assert result(mmu, 5) == -7.0


def test_compare_codes_and_fcomi():
    cpu, mmu = machine(a=1.0, b=2.0)
    run_code(cpu, mmu, bytes.fromhex(fld(1) + fld(0) + "d8d1" + "dfe0"))  # fcom st(1); fnstsw ax: 1 < 2 -> C0
    assert cpu.regs[0] & (C3 | C2 | C0) == C0
    cpu, mmu = machine(a=1.0, b=2.0)
    run_code(cpu, mmu, bytes.fromhex(fld(1) + fld(0) + "dbf1"))  # fcomi st,st(1): less -> CF
    assert cpu.rflags & 0x45 == 0x01


def test_fxam_classes():
    cases = {0.0: C3, -1.0: C2 | C1, float("inf"): C2 | C0, float("nan"): C0, 5e-324: C2}  # a double denormal
    for value, codes in cases.items():   # is a normal extended number
        cpu, mmu = machine(x=value)
        run_code(cpu, mmu, bytes.fromhex(fld(0) + "d9e5" + "dfe0"))
        assert cpu.regs[0] & (C3 | C2 | C1 | C0) == codes, value
    cpu, mmu = machine()
    run_code(cpu, mmu, bytes.fromhex("dbe3" "d9e5" "dfe0"))  # empty stack
    assert cpu.regs[0] & (C3 | C2 | C0) == C3 | C0


def test_stack_overflow_is_invalid_and_fninit_resets():
    cpu, mmu = machine(x=1.0)
    run_code(cpu, mmu, bytes.fromhex(fld(0) * 9 + "dfe0"))
    assert cpu.regs[0] & 0x41 == 0x41  # IE and SF
    cpu.rip = 0x10000
    run_code(cpu, mmu, bytes.fromhex("dbe3" "dfe0" "d97b30"))  # fninit; fnstsw ax; fnstcw [ebx+30h]
    assert cpu.regs[0] & 0xFFFF == 0 and mmu.read(DATA + 0x30, 2, False) == 0x037F


def test_80bit_store_and_environment():
    cpu, mmu = machine(x=-3.0)
    run_code(cpu, mmu, bytes.fromhex(fld(0) + "db7b10" + "d97320"))  # fstp tbyte [ebx+16]; fnstenv [ebx+32]
    assert mmu.read_bytes(DATA + 0x10, 10, False) == to_ext(-3.0)
    assert mmu.read(DATA + 0x20, 2, False) == 0x037F
    assert mmu.read(DATA + 0x28, 2, False) == 0xFFFF  # every register empty again
    assert cpu.fpu.fcw & 0x3F == 0x3F  # FNSTENV masks exceptions
