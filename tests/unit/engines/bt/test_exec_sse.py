"""SSE/SSE2: packed-integer lanes, shuffles, scalar moves and scalar floating point."""

from __future__ import annotations

import struct

import pytest
from unit.engines.bt.test_exec_harness import SparseMmu, fault_of, make_cpu, run_code

from xvm.engines.bt.faults import GP


def lanes(values, width):
    return sum((v & ((1 << width) - 1)) << (i * width) for i, v in enumerate(values))


def dbl(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def run(code: str, xmm0: int = 0, xmm1: int = 0, **regs):
    cpu = make_cpu(64)
    cpu.xmm[0], cpu.xmm[1] = xmm0, xmm1
    for i, name in enumerate(("rax", "rcx", "rdx", "rbx")):
        cpu.regs[i] = regs.get(name, 0)
    run_code(cpu, SparseMmu(), bytes.fromhex(code))
    return cpu


@pytest.mark.parametrize("code,a,b,expected", [
    ("660ffcc1", lanes([250, 1] * 8, 8), lanes([10, 2] * 8, 8), lanes([4, 3] * 8, 8)),           # paddb wraps
    ("660f64c1", lanes([0x80, 5] * 8, 8), lanes([1, 4] * 8, 8), lanes([0, 0xFF] * 8, 8)),       # pcmpgtb signed
    ("660f76c1", lanes([1, 2, 3, 4], 32), lanes([1, 0, 3, 0], 32), lanes([-1, 0, -1, 0], 32)),  # pcmpeqd
    ("660f6cc1", lanes([1, 2], 64), lanes([3, 4], 64), lanes([1, 3], 64)),                      # punpcklqdq
    ("660f68c1", lanes(range(16), 8), lanes(range(16, 32), 8),
     lanes([8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31], 8)),                 # punpckhbw
    ("660fdfc1", 0xF0F0, 0xFFFF, 0x0F0F),                                                       # pandn
    ("660f67c1", lanes([300, -5, 7, 0] * 2, 16), 0, lanes([255, 0, 7, 0] * 2, 8)),              # packuswb
    ("660fd2c1", lanes([0x80000000] * 4, 32), 4, lanes([0x08000000] * 4, 32)),                  # psrld by xmm
    ("660fe1c1", lanes([-64] * 8, 16), 3, lanes([-8] * 8, 16)),                                 # psraw
    ("660fedc1", lanes([0x7FFF, -0x8000] * 4, 16), lanes([1, -1] * 4, 16), lanes([0x7FFF, -0x8000] * 4, 16)),  # paddsw
    ("660ff5c1", lanes([-0x8000] * 8, 16), lanes([-0x8000] * 8, 16), lanes([0x80000000] * 4, 32)),  # pmaddwd
    ("660ff6c1", lanes([9] + [0] * 15, 8), lanes([0] * 8 + [0, 4] + [0] * 6, 8), lanes([9, 4], 64)),  # psadbw
    ("660fe3c1", lanes([0xFFFF, 1] * 4, 16), lanes([0xFFFF, 2] * 4, 16), lanes([0xFFFF, 2] * 4, 16)),  # pavgw
])
def test_packed_integer(code, a, b, expected):
    assert run(code, a, b).xmm[0] == expected


def test_immediate_shifts_and_shuffles():
    v = lanes(range(16), 8)
    assert run("660f73d803", v).xmm[0] == v >> 24                         # psrldq xmm0, 3
    assert run("660f73f805", v).xmm[0] == (v << 40) & ((1 << 128) - 1)   # pslldq xmm0, 5
    assert run("660f72f004", lanes([1, 2, 3, 4], 32)).xmm[0] == lanes([16, 32, 48, 64], 32)  # pslld 4
    w = lanes(range(8), 16)
    assert run("f20f70c11b", 0, w).xmm[0] == lanes([3, 2, 1, 0, 4, 5, 6, 7], 16)  # pshuflw 0x1B
    a, b = lanes([0, 1, 2, 3], 32), lanes([4, 5, 6, 7], 32)
    assert run("0fc6c1e4", a, b).xmm[0] == lanes([0, 1, 6, 7], 32)        # shufps 0xE4
    assert run("660fc5c102", 0, w, rax=-1 & 0xFFFFFFFFFFFFFFFF).regs[0] == 2  # pextrw eax, xmm1, 2
    assert run("660fc4c003", 0, 0, rax=0xBEEF).xmm[0] == 0xBEEF << 48     # pinsrw xmm0, eax, 3


def test_movmsk_and_logic():
    assert run("660fd7c0", lanes([0x80, 0] * 8, 8)).regs[0] == 0x5555      # pmovmskb eax, xmm0
    assert run("0f50c0", lanes([1 << 31, 0, 0, 1 << 31], 32)).regs[0] == 0b1001  # movmskps


def test_scalar_moves():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.write(0x5000, 8, dbl(2.5), False)
    cpu.xmm[0] = (7 << 64) | 1
    cpu.regs[3] = 0x5000
    run_code(cpu, mmu, bytes.fromhex("f20f1003"))            # movsd xmm0, [rbx]: upper half zeroed
    assert cpu.xmm[0] == dbl(2.5)
    cpu.rip = 0x10000
    cpu.xmm[1] = (9 << 64) | 5
    run_code(cpu, mmu, bytes.fromhex("f20f10c8"))            # movsd xmm1, xmm0: upper half kept
    assert cpu.xmm[1] == (9 << 64) | dbl(2.5)


@pytest.mark.parametrize("code,a,b,expected", [
    ("f20f58c1", 1.5, 2.25, 3.75),     # addsd
    ("f20f5cc1", 1.0, 3.0, -2.0),      # subsd
    ("f20f59c1", 1.5, -4.0, -6.0),     # mulsd
    ("f20f5ec1", 1.0, 4.0, 0.25),      # divsd
    ("f20f5ec1", 1.0, 0.0, float("inf")),
    ("f20f5dc1", 3.0, 2.0, 2.0),       # minsd
    ("f20f51c1", 0.0, 9.0, 3.0),       # sqrtsd
])
def test_scalar_double(code, a, b, expected):
    assert run(code, dbl(a) | (5 << 64), dbl(b)).xmm[0] == dbl(expected) | (5 << 64)


def test_scalar_single_rounds_once():
    one_third = struct.unpack("<I", struct.pack("<f", 1.0 / 3.0))[0]
    one = struct.unpack("<I", struct.pack("<f", 1.0))[0]
    three = struct.unpack("<I", struct.pack("<f", 3.0))[0]
    assert run("f30f5ec1", one, three).xmm[0] == one_third   # divss


def test_comparisons_and_conversions():
    cpu = run("660f2ec1", dbl(1.0), dbl(2.0))                 # ucomisd: less -> CF
    assert cpu.rflags & 0x45 == 0x01
    cpu = run("660f2ec1", dbl(float("nan")), dbl(2.0))       # unordered -> ZF PF CF
    assert cpu.rflags & 0x45 == 0x45
    assert run("f2480f2cc0", dbl(-2.75)).regs[0] == (-2) & (2**64 - 1)   # cvttsd2si rax, xmm0
    assert run("f20f2dc0", dbl(2.5)).regs[0] == 2                         # cvtsd2si: nearest-even
    assert run("f20f2cc0", dbl(1e20)).regs[0] == 0x80000000               # integer indefinite
    assert run("f2480f2ac0", 0, 0, rax=(-7) & (2**64 - 1)).xmm[0] == dbl(-7.0)  # cvtsi2sd xmm0, rax
    assert run("f30f5ac0", struct.unpack("<I", struct.pack("<f", 0.5))[0]).xmm[0] == dbl(0.5)  # cvtss2sd


def test_aligned_forms_check_alignment():
    cpu = make_cpu(64)
    cpu.regs[3] = 0x5008
    assert fault_of(cpu, SparseMmu(), bytes.fromhex("660f6f03")).vector == GP   # movdqa xmm0, [rbx]
    cpu.rip = 0x10000
    assert fault_of(cpu, SparseMmu(), bytes.fromhex("660fef03")).vector == GP   # pxor xmm0, [rbx]
    cpu.rip = 0x10000
    run_code(cpu, SparseMmu(), bytes.fromhex("f30f6f03"))                       # movdqu: fine
