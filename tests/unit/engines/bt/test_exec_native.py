"""The host CPU as the oracle: random register-only integer instructions, native versus interpreted.

Each case runs once on the host (a small machine-code stub loads the 15
general registers and the arithmetic flags, executes the instruction and
stores them back) and once in the bt interpreter in 64-bit mode; registers
and the flags the SDM defines for that instruction must agree. Only
register operands, never RSP, no control flow and no #DE (the model's
divide-error rule is checked separately), so the native run cannot fault.
Skipped where the host is not x86-64 Linux or refuses executable memory.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import random
import struct
import sys

import pytest
from unit.engines.bt.test_exec_harness import SparseMmu, make_cpu, run_code

from xvm.engines.bt.decoder.table import PACKED_INT_OPS, PACKED_SHIFT_IMM, SCALAR_FP_OPS

CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
ALL = CF | PF | AF | ZF | SF | OF
REGS = [r for r in range(16) if r != 4]  # never RSP
CASES = 3000

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux",
                                reason="needs an x86-64 Linux host")


XMM_BASE = 17 * 8  # state: 16 GPRs, RFLAGS, then XMM0..XMM15 (16 bytes each), then MXCSR
MXCSR_OFFSET = XMM_BASE + 16 * 16


def _xmm_moves(store: bool) -> bytes:
    """movdqu xmmN, [rdi+XMM_BASE+16N] (or the store) for N = 0..15."""
    out = bytearray()
    for n in range(16):
        rex = b"\x44" if n >= 8 else b""
        out += b"\xf3" + rex + bytes([0x0F, 0x7F if store else 0x6F, 0x87 | ((n & 7) << 3)])
        out += struct.pack("<i", XMM_BASE + 16 * n)
    return bytes(out)


def _stub(instruction: bytes) -> bytes:
    """void run(uint64_t state[49]): regs 0..15 (RSP ignored), [16] = RFLAGS, XMM0-15 after."""
    code = bytearray()
    code += bytes.fromhex("53 55 4154 4155 4156 4157 57")                    # push rbx rbp r12-r15 rdi
    code += _xmm_moves(store=False)
    code += bytes.fromhex("0f ae 97") + struct.pack("<i", MXCSR_OFFSET)      # ldmxcsr [rdi+MXCSR_OFFSET]
    code += bytes.fromhex("ff b7 80 00 00 00 9d")                            # push [rdi+128]; popfq
    for r in REGS:
        if r == 7:
            continue
        rex = 0x48 | (4 if r >= 8 else 0)
        code += bytes([rex, 0x8B, 0x87 | ((r & 7) << 3)]) + struct.pack("<i", 8 * r)  # mov r, [rdi+8r]
    code += bytes.fromhex("48 8b 7f 38")                                     # mov rdi, [rdi+56]
    code += instruction
    code += bytes.fromhex("48 87 3c 24")                                     # xchg rdi, [rsp]
    for r in REGS:
        if r == 7:
            continue
        rex = 0x48 | (4 if r >= 8 else 0)
        code += bytes([rex, 0x89, 0x87 | ((r & 7) << 3)]) + struct.pack("<i", 8 * r)  # mov [rdi+8r], r
    code += bytes.fromhex("9c 58 48 89 87 80 00 00 00")                      # pushfq; pop rax; mov [rdi+128], rax
    code += _xmm_moves(store=True)
    code += bytes.fromhex("0f ae 9f") + struct.pack("<i", MXCSR_OFFSET)      # stmxcsr [rdi+MXCSR_OFFSET]
    code += bytes.fromhex("58 48 89 47 38")                                  # pop rax; mov [rdi+56], rax
    code += bytes.fromhex("415f 415e 415d 415c 5d 5b c3")                    # pop r15-r12 rbp rbx; ret
    return bytes(code)


class Native:
    def __init__(self) -> None:
        try:
            self.page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except (OSError, ValueError) as e:
            pytest.skip(f"no executable memory: {e}")
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.page))
        self.fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self.addr)

    def run(self, instruction: bytes, regs: list[int], flags: int, xmm: list[int],
            mxcsr: int = 0x1F80) -> tuple[list[int], int, list, int]:
        self.page.seek(0)
        self.page.write(_stub(instruction))
        halves = []
        for v in xmm:
            halves += [v & 0xFFFFFFFFFFFFFFFF, v >> 64]
        state = (ctypes.c_uint64 * 50)(*regs, flags, *halves, mxcsr)
        self.fn(ctypes.addressof(state))
        out = [state[17 + 2 * n] | (state[18 + 2 * n] << 64) for n in range(16)]
        return list(state[:16]), state[16], out, state[49] & 0xFFFFFFFF


def _modrm(rng: random.Random, reg_field: int = -1) -> tuple[int, int]:
    """(REX bits R/B, ModRM) for a register-register form avoiding RSP/SPL."""
    reg = reg_field if reg_field >= 0 else rng.choice(REGS)
    rm = rng.choice(REGS)
    rex = (4 if reg >= 8 else 0) | (1 if rm >= 8 else 0)
    return rex, 0xC0 | ((reg & 7) << 3) | (rm & 7)


def random_instruction(rng: random.Random) -> tuple[bytes, int]:
    """(encoding, flags the SDM defines for it) for one random register-only instruction."""
    size = rng.choice((1, 2, 4, 8))
    kind = rng.choice(("alu", "alu_imm", "unary", "shift", "shift_cl", "rot", "mul", "imul2", "imul3",
                       "bt", "bsf", "movx", "cmov", "set", "xadd", "cmpxchg", "shd", "bswap", "misc", "div"))
    if kind in ("imul2", "imul3", "bt", "bsf", "movx", "cmov", "shd", "bswap", "div") and size == 1:
        size = 4
    prefix = b"\x66" if size == 2 else b""
    w = 8 if size == 8 else 0

    def rex_for(rex_bits: int) -> bytes:
        # Byte forms: no REX unless needed (no REX keeps AH..BH; with REX 4..7 would be SPL.. which we avoid).
        bits = w | rex_bits
        return bytes([0x40 | bits]) if bits or (size == 1 and rex_bits) else b""

    if kind == "alu":
        rex, modrm = _modrm(rng)
        op = rng.randrange(8) * 8 + (0 if size == 1 else 1)
        defined = ALL if (op >> 3) not in (1, 4, 6) else ALL & ~AF
        return prefix + rex_for(rex) + bytes([op, modrm]), defined
    if kind == "alu_imm":
        rex, modrm = _modrm(rng, reg_field=rng.randrange(8))
        modrm = (modrm & ~0x38) | (rng.randrange(8) << 3)
        digit = (modrm >> 3) & 7
        defined = ALL if digit not in (1, 4, 6) else ALL & ~AF
        if size == 1:
            return rex_for(rex & 1) + bytes([0x80, modrm, rng.randrange(256)]), defined
        if rng.random() < 0.5:
            return prefix + rex_for(rex & 1) + bytes([0x83, modrm, rng.randrange(256)]), defined
        imm = rng.randrange(1 << 16) if size == 2 else rng.randrange(1 << 32)
        return prefix + rex_for(rex & 1) + bytes([0x81, modrm]) + imm.to_bytes(2 if size == 2 else 4, "little"), defined
    if kind == "unary":
        rex, modrm = _modrm(rng)
        digit = rng.choice((0, 1, 2, 3))  # inc dec (FE/FF) / not neg (F6/F7)
        opc = (0xFE if digit < 2 else 0xF6) + (0 if size == 1 else 1)
        modrm = (modrm & ~0x38) | ((digit if digit < 2 else digit) << 3)
        return prefix + rex_for(rex & 1) + bytes([opc, modrm]), ALL if digit != 2 else 0
    if kind in ("shift", "shift_cl", "rot"):
        rex, modrm = _modrm(rng)
        digit = rng.choice((4, 5, 7)) if kind != "rot" else rng.choice((0, 1, 2, 3))
        modrm = (modrm & ~0x38) | (digit << 3)
        count = rng.choice((0, 1, 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64, 200))
        masked = count & (0x3F if size == 8 else 0x1F)
        if kind == "shift_cl":
            # Put the count in CL by the case's register values (see test): use D2/D3 with CL.
            opc = 0xD2 if size == 1 else 0xD3
            encoding = prefix + rex_for(rex & 1) + bytes([opc, modrm])
        else:
            opc = 0xC0 if size == 1 else 0xC1
            encoding = prefix + rex_for(rex & 1) + bytes([opc, modrm, count & 0xFF])
        if kind == "rot":
            defined = CF | (OF if masked == 1 else 0)
            if digit >= 2 and size in (1, 2):
                # RCL/RCR of 8/16-bit operands: the SDM defines the count modulo 9/17.
                defined = CF | (OF if masked == 1 else 0)
        else:
            defined = (CF | SF | ZF | PF | (OF if masked == 1 else 0)) if masked else ALL
            if masked >= size * 8 and size < 4:
                defined = SF | ZF | PF  # CF undefined when the count exceeds the width (SDM SAL/SAR)
        if kind == "shift_cl":
            return encoding, defined | ((0x100 | count) << 16)  # CL's value travels in the high bits
        return encoding, defined
    if kind == "mul":
        rex, modrm = _modrm(rng)
        digit = rng.choice((4, 5))
        modrm = (modrm & ~0x38) | (digit << 3)
        return prefix + rex_for(rex & 1) + bytes([0xF6 if size == 1 else 0xF7, modrm]), CF | OF
    if kind == "imul2":
        rex, modrm = _modrm(rng)
        return prefix + rex_for(rex) + bytes([0x0F, 0xAF, modrm]), CF | OF
    if kind == "imul3":
        rex, modrm = _modrm(rng)
        if rng.random() < 0.5:
            return prefix + rex_for(rex) + bytes([0x6B, modrm, rng.randrange(256)]), CF | OF
        imm = rng.randrange(1 << 16) if size == 2 else rng.randrange(1 << 32)
        return prefix + rex_for(rex) + bytes([0x69, modrm]) + imm.to_bytes(2 if size == 2 else 4, "little"), CF | OF
    if kind == "bt":
        rex, modrm = _modrm(rng)
        if rng.random() < 0.5:
            op = rng.choice((0xA3, 0xAB, 0xB3, 0xBB))
            return prefix + rex_for(rex) + bytes([0x0F, op, modrm]), CF
        modrm = (modrm & ~0x38) | (rng.choice((4, 5, 6, 7)) << 3)
        return prefix + rex_for(rex & 1) + bytes([0x0F, 0xBA, modrm, rng.randrange(256)]), CF
    if kind == "bsf":
        rex, modrm = _modrm(rng)
        return prefix + rex_for(rex) + bytes([0x0F, rng.choice((0xBC, 0xBD)), modrm]), ZF
    if kind == "movx":
        rex, modrm = _modrm(rng)
        op = rng.choice((0xB6, 0xB7, 0xBE, 0xBF))
        return prefix + rex_for(rex) + bytes([0x0F, op, modrm]), ALL
    if kind == "cmov":
        rex, modrm = _modrm(rng)
        return prefix + rex_for(rex) + bytes([0x0F, 0x40 + rng.randrange(16), modrm]), ALL
    if kind == "set":
        rex, modrm = _modrm(rng)
        return rex_for(rex & 1) + bytes([0x0F, 0x90 + rng.randrange(16), modrm & 0xC7]), ALL
    if kind == "xadd":
        rex, modrm = _modrm(rng)
        return prefix + rex_for(rex) + bytes([0x0F, 0xC0 if size == 1 else 0xC1, modrm]), ALL
    if kind == "cmpxchg":
        rex, modrm = _modrm(rng)
        return prefix + rex_for(rex) + bytes([0x0F, 0xB0 if size == 1 else 0xB1, modrm]), ALL
    if kind == "shd":
        rex, modrm = _modrm(rng)
        count = rng.choice((0, 1, 2, 5, 15, 16, 17, 31, 32, 40, 63))
        masked = count & (0x3F if size == 8 else 0x1F)
        defined = ALL if not masked else (CF | SF | ZF | PF | (OF if masked == 1 else 0))
        if size == 2 and masked > 16:
            return b"\x90", 0  # result undefined
        if size == 2 and masked == 16:
            defined &= ~CF
        return prefix + rex_for(rex) + bytes([0x0F, rng.choice((0xA4, 0xAC)), modrm, count]), defined
    if kind == "bswap":
        r = rng.choice(REGS)
        if size == 2:
            size = 4
        return (bytes([0x40 | w | (1 if r >= 8 else 0)]) if w or r >= 8 else b"") + bytes([0x0F, 0xC8 | (r & 7)]), ALL
    if kind == "div":
        rex, modrm = _modrm(rng)
        modrm = (modrm & ~0x38) | (rng.choice((6, 7)) << 3)
        return prefix + rex_for(rex & 1) + bytes([0xF7, modrm]), 0  # the caller screens #DE
    misc = rng.choice(("98", "4898", "99", "4899", "6699", "9e", "9f", "f5", "f8", "f9", "90", "4891", "87ca"))
    return bytes.fromhex(misc), ALL


def _would_divide_error(encoding: bytes, regs: list[int]) -> bool:
    """Screen DIV/IDIV cases that fault, using the architectural rule (the host would raise SIGFPE)."""
    i = 0
    size = 4
    rex = 0
    while encoding[i] in (0x66,) or 0x40 <= encoding[i] <= 0x4F:
        if encoding[i] == 0x66:
            size = 2
        else:
            rex = encoding[i]
        i += 1
    if encoding[i] != 0xF7:
        return False
    if rex & 8:
        size = 8
    modrm = encoding[i + 1]
    rm = (modrm & 7) | ((rex & 1) << 3)
    bits = size * 8
    mask = (1 << bits) - 1
    divisor = regs[rm] & mask
    if divisor == 0:
        return True
    dividend = ((regs[2] & mask) << bits) | (regs[0] & mask)
    if (modrm >> 3) & 7 == 6:
        return dividend // divisor > mask
    n = dividend - (1 << (2 * bits)) if dividend >> (2 * bits - 1) else dividend
    d = divisor - (1 << bits) if divisor >> (bits - 1) else divisor
    q = abs(n) // abs(d) * (1 if (n < 0) == (d < 0) else -1)
    return not -(1 << (bits - 1)) <= q < (1 << (bits - 1))


def test_random_instructions_match_the_host_cpu():
    native = Native()
    rng = random.Random(1234)
    mismatches = []
    ran = 0
    for _ in range(CASES):
        encoding, defined = random_instruction(rng)
        count = defined >> 16
        defined &= 0xFFFF
        regs = [rng.choice((0, 1, 0x7F, 0x80, 0xFFFF, 0x8000_0000, (1 << 64) - 1, 1 << 63,
                            rng.randrange(1 << 64), rng.randrange(1 << 64))) for _ in range(16)]
        regs[4] = 0
        if count:
            regs[1] = (regs[1] & ~0xFF) | (count & 0xFF)  # the shift count for a "shift by CL" case
        if _would_divide_error(encoding, regs):
            continue
        flags = 2 | rng.choice((0, ALL, CF, ZF | PF, SF | OF | AF))
        got_regs, got_flags, _, _ = native.run(encoding, regs, flags, [0] * 16)
        cpu = make_cpu(64)
        cpu.regs[:] = regs
        cpu.regs[4] = 0x8000
        cpu.rflags = flags
        run_code(cpu, SparseMmu(), encoding)
        ours = list(cpu.regs)
        ours[4] = got_regs[4] = 0
        ran += 1
        if ours != got_regs or (cpu.rflags ^ got_flags) & defined:
            diff = [(i, hex(a), hex(b)) for i, (a, b) in enumerate(zip(ours, got_regs)) if a != b]
            mismatches.append(f"{encoding.hex()}: regs {diff} flags ours={cpu.rflags:#x} host={got_flags:#x} "
                              f"defined={defined:#x}")
    assert ran > CASES // 2
    assert not mismatches, "\n".join(mismatches[:20])


def _xmm_modrm(rng: random.Random) -> tuple[int, int]:
    reg, rm = rng.randrange(16), rng.randrange(16)
    return (4 if reg >= 8 else 0) | (1 if rm >= 8 else 0), 0xC0 | ((reg & 7) << 3) | (rm & 7)


def random_sse(rng: random.Random) -> tuple[bytes, int]:
    """(encoding, defined flags) of one register-only SSE/SSE2 instruction from the table."""
    rex, modrm = _xmm_modrm(rng)
    rex_byte = bytes([0x40 | rex]) if rex else b""
    kind = rng.choice(("packed", "packed", "shift_imm", "shuffle", "ps", "scalar", "scalar", "compare", "convert",
                       "moves", "gpr"))
    if kind == "packed":
        opc, _ = rng.choice(PACKED_INT_OPS)
        return b"\x66" + rex_byte + bytes([0x0F, int(opc, 16), modrm]), ALL
    if kind == "shift_imm":
        opc, digit, _ = rng.choice(PACKED_SHIFT_IMM)
        rm_rex = rex & 1
        m = 0xC0 | (digit << 3) | (modrm & 7)
        count = rng.choice((0, 1, 3, 7, 8, 15, 16, 31, 33, 64, 200))
        return b"\x66" + (b"\x41" if rm_rex else b"") + bytes([0x0F, int(opc, 16), m, count]), ALL
    if kind == "shuffle":
        prefix, opc = rng.choice(((b"\x66", 0x70), (b"\xf2", 0x70), (b"\xf3", 0x70), (b"", 0xC6), (b"\x66", 0xC6)))
        return prefix + rex_byte + bytes([0x0F, opc, modrm, rng.randrange(256)]), ALL
    if kind == "ps":
        prefix = rng.choice((b"", b"\x66"))
        opc = rng.choice((0x14, 0x15, 0x54, 0x55, 0x56, 0x57, 0x28, 0x10))
        return prefix + rex_byte + bytes([0x0F, opc, modrm]), ALL
    if kind == "scalar":
        opc, _ = rng.choice(SCALAR_FP_OPS)
        return rng.choice((b"\xf2", b"\xf3")) + rex_byte + bytes([0x0F, int(opc, 16), modrm]), ALL
    if kind == "compare":
        prefix = rng.choice((b"", b"\x66"))
        return prefix + rex_byte + bytes([0x0F, rng.choice((0x2E, 0x2F)), modrm]), ALL
    if kind == "convert":
        choice = rng.choice(("2a", "2c", "2d", "5a"))
        prefix = rng.choice((b"\xf2", b"\xf3"))
        w = rng.choice((0, 8)) if choice != "5a" else 0
        rex_w = rex | w
        if choice in ("2a", "2c", "2d"):
            reg, rm = (modrm >> 3) & 7, modrm & 7
            if choice == "2a" and (rm == 4 and not rex & 1):
                return b"\x90", 0  # the GPR source would be RSP
            if choice != "2a" and (reg == 4 and not rex & 4):
                return b"\x90", 0  # the GPR destination would be RSP
        return prefix + (bytes([0x40 | rex_w]) if rex_w else b"") + bytes([0x0F, int(choice, 16), modrm]), ALL
    if kind == "moves":
        prefix, opc = rng.choice(((b"\xf3", 0x10), (b"\xf2", 0x10), (b"\xf3", 0x11), (b"\xf2", 0x11),
                                  (b"", 0x12), (b"", 0x16), (b"\xf3", 0x7E), (b"\x66", 0xD6), (b"\x66", 0x6F),
                                  (b"\xf3", 0x6F)))
        return prefix + rex_byte + bytes([0x0F, opc, modrm]), ALL
    # xmm <-> GPR: movd/movq, pmovmskb, movmskps/pd, pextrw, pinsrw (GPR side never RSP)
    reg, rm = (modrm >> 3) & 7, modrm & 7
    prefix, opc, gpr_field = rng.choice(((b"\x66", 0x6E, "rm"), (b"\x66", 0x7E, "rm"), (b"\x66", 0xD7, "reg"),
                                         (b"", 0x50, "reg"), (b"\x66", 0x50, "reg"), (b"\x66", 0xC5, "reg"),
                                         (b"\x66", 0xC4, "rm")))
    if (gpr_field == "rm" and rm == 4 and not rex & 1) or (gpr_field == "reg" and reg == 4 and not rex & 4):
        return b"\x90", 0
    w = rng.choice((0, 8))
    rex_w = rex | w
    tail = bytes([rng.randrange(256)]) if opc in (0xC4, 0xC5) else b""
    return prefix + (bytes([0x40 | rex_w]) if rex_w else b"") + bytes([0x0F, opc, modrm]) + tail, ALL


def _interesting_xmm(rng: random.Random) -> int:
    """Random lanes mixed with FP specials: zeros, ones, NaNs, infinities, denormals, large integers."""
    specials = [0, 1.0, -1.0, 2.5, -0.0, float("inf"), float("-inf"), float("nan"), 1e300, 1e-310, 3.0e9, -7.5]
    lanes = []
    for _ in range(2):
        r = rng.random()
        if r < 0.4:
            lanes.append(struct.unpack("<Q", struct.pack("<d", rng.choice(specials)))[0])
        elif r < 0.6:
            lo = struct.unpack("<I", struct.pack("<f", rng.choice(specials[:7] + [2.0, 0.1])))[0]
            lanes.append(lo | (rng.randrange(1 << 32) << 32))
        else:
            lanes.append(rng.randrange(1 << 64))
    return lanes[0] | (lanes[1] << 64)


def test_random_sse_instructions_match_the_host_cpu():
    native = Native()
    rng = random.Random(4321)
    mismatches = []
    for _ in range(CASES):
        encoding, defined = random_sse(rng)
        regs = [rng.choice((0, 1, 0xFFFF, 0x8000_0000, rng.randrange(1 << 64))) for _ in range(16)]
        regs[4] = 0
        xmm = [_interesting_xmm(rng) for _ in range(16)]
        flags = 2 | rng.choice((0, ALL))
        got_regs, got_flags, got_xmm, got_mxcsr = native.run(encoding, regs, flags, xmm)
        cpu = make_cpu(64)
        cpu.regs[:] = regs
        cpu.regs[4] = 0x8000
        cpu.rflags = flags
        cpu.xmm[:] = xmm
        run_code(cpu, SparseMmu(), encoding)
        ours = list(cpu.regs)
        ours[4] = got_regs[4] = 0
        if ours != got_regs or cpu.xmm != got_xmm or (cpu.rflags ^ got_flags) & defined or cpu.mxcsr != got_mxcsr:
            diff = [(f"xmm{i}", hex(a), hex(b)) for i, (a, b) in enumerate(zip(cpu.xmm, got_xmm)) if a != b]
            diff += [(f"r{i}", hex(a), hex(b)) for i, (a, b) in enumerate(zip(ours, got_regs)) if a != b]
            mismatches.append(f"{encoding.hex()}: {diff} flags ours={cpu.rflags:#x} host={got_flags:#x} "
                              f"mxcsr ours={cpu.mxcsr:#x} host={got_mxcsr:#x}")
    assert not mismatches, "\n".join(mismatches[:20])
