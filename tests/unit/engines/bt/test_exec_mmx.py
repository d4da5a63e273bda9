"""MMX: packed-integer lanes at 64 bits, moves, and the aliasing with the x87 registers and FXSAVE."""

from __future__ import annotations

import pytest
from unit.engines.bt.test_exec_harness import SparseMmu, fault_of, make_cpu, run_code

from xvm.arch.x86.regs import CR0_EM, CR0_TS
from xvm.engines.bt.faults import NM, UD
from xvm.engines.bt.ops.mmx import get_mm
from xvm.engines.bt.ops.x87 import fpu, from_ext

M64 = (1 << 64) - 1


def lanes(values, width):
    return sum((v & ((1 << width) - 1)) << (i * width) for i, v in enumerate(values))


def setup(mm0: int = 0, mm1: int = 0, **regs):
    cpu = make_cpu(64)
    st = fpu(cpu)
    st.st[0] = mm0.to_bytes(8, "little") + bytes(2)
    st.st[1] = mm1.to_bytes(8, "little") + bytes(2)
    for i, name in enumerate(("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")):
        if name in regs:
            cpu.regs[i] = regs[name]
    return cpu


def run(code: str, mm0: int = 0, mm1: int = 0, mmu=None, **regs):
    cpu = setup(mm0, mm1, **regs)
    run_code(cpu, mmu or SparseMmu(), bytes.fromhex(code))
    return cpu


def mm(cpu, i: int) -> int:
    return get_mm(fpu(cpu), i)


@pytest.mark.parametrize("code,a,b,expected", [
    # op mm0, mm1 (ModRM C1)
    ("0fedc1", lanes([0x7FFF, -0x8000, 100, -1], 16), lanes([1, -1, -200, 1], 16),
     lanes([0x7FFF, -0x8000, -100, 0], 16)),                                                  # paddsw saturates
    ("0fdcc1", lanes([250, 5, 0, 255] * 2, 8), lanes([10, 5, 0, 1] * 2, 8),
     lanes([255, 10, 0, 255] * 2, 8)),                                                        # paddusb
    ("0fd9c1", lanes([5, 0xFFFF, 3, 0], 16), lanes([10, 1, 3, 1], 16), lanes([0, 0xFFFE, 0, 0], 16)),  # psubusw
    ("0fe8c1", lanes([-128, 127, 0, 5] * 2, 8), lanes([1, -1, 1, 10] * 2, 8),
     lanes([-128, 127, -1, -5] * 2, 8)),                                                      # psubsb
    ("0fe5c1", lanes([-2, 0x4000, -1, 3], 16), lanes([-0x8000, 4, 1, 5], 16), lanes([1, 1, -1, 0], 16)),  # pmulhw
    ("0fe4c1", lanes([0xFFFF, 2, 0, 0], 16), lanes([0xFFFF, 3, 0, 0], 16), lanes([0xFFFE, 0, 0, 0], 16)),  # pmulhuw
    ("0fd5c1", lanes([0x1234, -3, 0, 0], 16), lanes([0x10, 7, 0, 0], 16), lanes([0x2340, -21, 0, 0], 16)),  # pmullw
    ("0ff5c1", lanes([-0x8000, -0x8000, 2, 3], 16), lanes([-0x8000, -0x8000, 4, -5], 16),
     lanes([0x80000000, -7], 32)),                                                            # pmaddwd wraps
    ("0f63c1", lanes([300, -300, 5, -5], 16), lanes([127, 128, -128, -129], 16),
     lanes([127, -128, 5, -5, 127, 127, -128, -128], 8)),                                     # packsswb
    ("0f67c1", lanes([-1, 256, 255, 0], 16), lanes([1, -32768, 32767, 128], 16),
     lanes([0, 255, 255, 0, 1, 0, 255, 128], 8)),                                             # packuswb
    ("0f6bc1", lanes([0x10000, -0x10000], 32), lanes([32767, -32769], 32),
     lanes([32767, -32768, 32767, -32768], 16)),                                              # packssdw
    ("0f68c1", lanes(range(8), 8), lanes(range(8, 16), 8), lanes([4, 12, 5, 13, 6, 14, 7, 15], 8)),  # punpckhbw
    ("0f60c1", lanes(range(8), 8), lanes(range(8, 16), 8), lanes([0, 8, 1, 9, 2, 10, 3, 11], 8)),    # punpcklbw
    ("0f62c1", lanes([1, 2], 32), lanes([3, 4], 32), lanes([1, 3], 32)),                      # punpckldq
    ("0f6ac1", lanes([1, 2], 32), lanes([3, 4], 32), lanes([2, 4], 32)),                      # punpckhdq
    ("0f65c1", lanes([-1, 5, 0x7FFF, 0], 16), lanes([0, 4, -0x8000, 0], 16), lanes([0, -1, -1, 0], 16)),  # pcmpgtw
    ("0f74c1", lanes([1, 2] * 4, 8), lanes([1, 3] * 4, 8), lanes([0xFF, 0] * 4, 8)),        # pcmpeqb
    ("0fdfc1", 0xF0F0, M64, M64 ^ 0xF0F0),                                                    # pandn stays 64-bit
    ("0fd4c1", M64, 2, 1),                                                                    # paddq (SSE2) wraps
    ("0ff4c1", 0xFFFFFFFF_00000003, 0x12345678_FFFFFFFF, 3 * 0xFFFFFFFF),                     # pmuludq low dwords
    ("0fe0c1", lanes([255, 1, 2, 0] * 2, 8), lanes([0, 2, 2, 0] * 2, 8), lanes([128, 2, 2, 0] * 2, 8)),  # pavgb
    ("0ff6c1", lanes([0, 255, 10, 3, 0, 0, 0, 0], 8), lanes([255, 0, 3, 10, 0, 0, 0, 1], 8),
     255 + 255 + 7 + 7 + 1),                                                                  # psadbw
    ("0fdac1", lanes([5, 200] * 4, 8), lanes([7, 100] * 4, 8), lanes([5, 100] * 4, 8)),      # pminub
    ("0feec1", lanes([-5, 3, 0, 0], 16), lanes([2, -3, 0, 0], 16), lanes([2, 3, 0, 0], 16)),  # pmaxsw
    ("0fd1c1", lanes([0x8000] * 4, 16), 15, lanes([1] * 4, 16)),                              # psrlw by 15
    ("0fd1c1", lanes([0x8000] * 4, 16), 16, 0),                                               # psrlw by 16 clears
    ("0fe1c1", lanes([-0x8000, 0x4000, 0, 0], 16), 1 << 40, lanes([-1, 0, 0, 0], 16)),        # psraw by 2**40: sign
    ("0ff3c1", 1, 63, 1 << 63),                                                               # psllq by 63
    ("0ff3c1", 1, 64, 0),                                                                     # psllq by 64 clears
])
def test_packed_integer(code, a, b, expected):
    assert mm(run(code, a, b), 0) == expected


def test_immediate_shifts_shuffle_and_word_moves():
    assert mm(run("0f72e028", lanes([-2, 0x7FFFFFFF], 32)), 0) == lanes([-1, 0], 32)   # psrad mm0, 40
    assert mm(run("0f73f040", M64), 0) == 0                                            # psllq mm0, 64
    assert mm(run("0f71d004", lanes([0xFFFF] * 4, 16)), 0) == lanes([0x0FFF] * 4, 16)  # psrlw mm0, 4
    w = lanes([10, 11, 12, 13], 16)
    assert mm(run("0f70c11b", 0, w), 0) == lanes([13, 12, 11, 10], 16)                 # pshufw mm0, mm1, 1Bh
    assert run("0fc5c105", 0, w, rax=M64).regs[0] == 11                                # pextrw eax, mm1, 5 (imm & 3)
    assert mm(run("0fc4c002", w, 0, rax=0xBEEF), 0) == lanes([10, 11, 0xBEEF, 13], 16)  # pinsrw mm0, eax, 2
    assert run("0fd7c0", lanes([0x80, 0x7F, 0xFF, 0, 0, 0, 0, 0x80], 8)).regs[0] == 0b10000101  # pmovmskb eax, mm0
    assert mm(run("440ffcc1", lanes([1] * 8, 8), lanes([2] * 8, 8)), 0) == lanes([3] * 8, 8)  # REX.R: still mm0


def test_moves_between_registers_and_memory():
    assert mm(run("0f6ec0", M64, rax=0xAAAA_BBBB_CCCC_DDDD), 0) == 0xCCCC_DDDD         # movd mm0, eax zero-extends
    assert mm(run("480f6ec0", rax=0xAAAA_BBBB_CCCC_DDDD), 0) == 0xAAAA_BBBB_CCCC_DDDD  # movq mm0, rax
    assert run("0f7ec0", 0x1111_2222_3333_4444, rax=M64).regs[0] == 0x3333_4444        # movd eax, mm0
    assert run("480f7ec0", 0x1111_2222_3333_4444).regs[0] == 0x1111_2222_3333_4444     # movq rax, mm0
    mmu = SparseMmu()
    cpu = run("0f7f03" "0f6f0b" "0fe74340", 0x0102_0304_0506_0708, mmu=mmu, rbx=0x5001)  # movq [rbx], mm0; movq mm1,
    assert mmu.read(0x5001, 8, False) == 0x0102_0304_0506_0708                          # [rbx] (unaligned);
    assert mmu.read(0x5001 + 0x40, 8, False) == 0x0102_0304_0506_0708                   # movntq [rbx+40h], mm0
    assert mm(cpu, 1) == 0x0102_0304_0506_0708
    cpu = run("0f6fc8", 0x55, 0)                                                        # movq mm1, mm0
    assert mm(cpu, 1) == 0x55


def test_maskmovq_writes_only_selected_bytes():
    mmu = SparseMmu()
    mmu.write(0x6000, 8, 0x1111_1111_1111_1111, False)
    run("0ff7c1", 0xAABB_CCDD_EEFF_0011, lanes([0x80, 0, 0xFF, 0x7F, 0, 0, 0, 0x80], 8), mmu=mmu, rdi=0x6000)
    assert mmu.read(0x6000, 8, False) == 0xAA11_1111_11FF_1111                          # maskmovq mm0, mm1
    cpu = setup(rdi=0x6100)
    cpu.xmm[0], cpu.xmm[1] = (0x77 << 120) | 0x66, (0x80 << 120) | 0x80
    mmu.write_bytes(0x6100, b"\x11" * 16, False)
    run_code(cpu, mmu, bytes.fromhex("660ff7c1"))                                         # maskmovdqu xmm0, xmm1
    assert mmu.read_bytes(0x6100, 16, False) == b"\x66" + b"\x11" * 14 + b"\x77"


def test_xmm_transfers():
    cpu = setup(0, 0x1234)
    cpu.xmm[1] = (7 << 64) | 0x99
    run_code(cpu, SparseMmu(), bytes.fromhex("f30fd6c1" "f20fd6c1"))  # movq2dq xmm0, mm1; movdq2q mm0, xmm1
    assert cpu.xmm[0] == 0x1234
    assert mm(cpu, 0) == 0x99


def test_x87_state_follows_mmx_and_emms():
    """MMX sets TOP to 0 and tags all valid, writes 1s into bits 64-79; EMMS empties the tags."""
    cpu = setup(lanes([1] * 8, 8), lanes([2] * 8, 8))
    st = fpu(cpu)
    st.fsw = 5 << 11
    st.ftw = 0x01
    run_code(cpu, SparseMmu(), bytes.fromhex("0ffcc1"))          # paddb mm0, mm1
    assert (st.fsw >> 11) & 7 == 0 and st.ftw == 0xFF
    assert st.st[0] == lanes([3] * 8, 8).to_bytes(8, "little") + b"\xff\xff"
    run_code(cpu, SparseMmu(), bytes.fromhex("0f77"))            # emms
    assert st.ftw == 0 and (st.fsw >> 11) & 7 == 0
    run_code(cpu, SparseMmu(), bytes.fromhex("d9e8"))            # fld1 after EMMS: no stack overflow
    assert (st.fsw >> 11) & 7 == 7 and st.ftw == 0x80 and from_ext(st.st[7]) == 1.0 and not st.fsw & 1


def test_fxsave_round_trip_keeps_mm_registers():
    mmu = SparseMmu()
    cpu = setup(rbx=0x7000)
    # movq mm3, rax (via rcx); fxsave [rbx]; pxor mm3, mm3; fxrstor [rbx]; movq rdx, mm3
    cpu.regs[1] = 0xDEAD_BEEF_0BAD_F00D
    run_code(cpu, mmu, bytes.fromhex("480f6ed9" "0fae03" "0fefdb" "0fae0b" "480f7eda"))
    assert mmu.read(0x7000 + 32 + 3 * 16, 8, False) == 0xDEAD_BEEF_0BAD_F00D       # the MM3 slot
    assert mmu.read(0x7000 + 32 + 3 * 16 + 8, 2, False) == 0xFFFF
    assert cpu.regs[2] == 0xDEAD_BEEF_0BAD_F00D


def test_fxsave_stores_registers_in_stack_order():
    """ST0..ST7 slots follow TOP (SDM Vol. 1 Table 10-2); FXRSTOR puts them back in the same physical registers."""
    mmu = SparseMmu()
    cpu = setup(rbx=0x7000)
    run_code(cpu, mmu, bytes.fromhex("d9e8" "d9ee" "0fae03"))      # fld1; fldz; fxsave [rbx]: ST0 = 0, ST1 = 1
    assert mmu.read(0x7000 + 32 + 8, 2, False) == 0                 # ST0 = +0.0
    assert mmu.read(0x7000 + 48 + 8, 2, False) == 0x3FFF            # ST1 = 1.0
    st = fpu(cpu)
    before = list(st.st)
    st.st = [bytes(10)] * 8
    run_code(cpu, mmu, bytes.fromhex("0fae0b"))                     # fxrstor [rbx]
    assert st.st == before and (st.fsw >> 11) & 7 == 6


@pytest.mark.parametrize("cr0_bits,vector", [(CR0_TS, NM), (CR0_EM, UD), (CR0_EM | CR0_TS, UD)])
def test_cr0_em_and_ts(cr0_bits, vector):
    for code in ("0ffcc1", "0f77", "0f6ec0"):                       # paddb, emms, movd
        cpu = setup()
        cpu.cr0 |= cr0_bits
        fpu(cpu).fsw = 3 << 11
        assert fault_of(cpu, SparseMmu(), bytes.fromhex(code)).vector == vector
        assert (fpu(cpu).fsw >> 11) & 7 == 3                        # nothing changed
