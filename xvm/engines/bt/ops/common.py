"""Operand access, segmentation checks and flag arithmetic shared by all handlers.

Handlers are plain functions `handler(cpu, mmu, ins, io)` registered under
the table's handler names (`add_Eb_Gb`) with `@handles`; cpu.py binds them
to the decoded rows once, so run-time dispatch is an attribute load on the
cached `Instr`, never a dict-of-strings lookup. When a handler runs,
`cpu.rip` already points past the instruction (what RIP-relative operands,
CALL and traps need); execute_one restores it if the handler faults.

Flags are computed eagerly into `cpu.rflags` (OSZAPC = 0x8D5) from the
unmasked result, the way the SDM's definitions read (Vol. 1 Appendix A).
"""

from __future__ import annotations

import math
from typing import Callable

from xvm.engines.bt.faults import GP, SS_FAULT, UD, GuestFault
from xvm.engines.bt.stack import check_limit
from xvm.engines.bt.state import FS, MODE_LONG, MODE_REAL, MODE_V86, SS

CF, PF, AF, ZF, SF, TF, IF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL_SHIFT = 12
OSZAPC = 0x8D5
NOT_OSZAPC = ~OSZAPC

#: Indexed by operand size in bytes.
MASK = (0, 0xFF, 0xFFFF, 0, 0xFFFFFFFF, 0, 0, 0, 0xFFFFFFFFFFFFFFFF)
SIGN = (0, 0x80, 0x8000, 0, 0x80000000, 0, 0, 0, 0x8000000000000000)
BITS = (0, 8, 16, 0, 32, 0, 0, 0, 64)
#: PF for a result's low byte: set when the number of 1 bits is even.
PARITY = bytes(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))
M64 = 0xFFFFFFFFFFFFFFFF

Handler = Callable[..., None]
HANDLERS: dict[str, Handler] = {}
#: Optional specialisations for instructions whose ModRM operand is in memory (HANDLERS then
#: serve the register forms); the decoder picks one per instruction.
HANDLERS_MEM: dict[str, Handler] = {}


def _registrar(table: dict[str, Handler], names: tuple[str, ...]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            if name in table:
                raise ValueError(f"handler {name} registered twice")
            table[name] = fn
        return fn
    return register


def handles(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler under one or more table handler names."""
    return _registrar(HANDLERS, names)


def handles_mem(*names: str) -> Callable[[Handler], Handler]:
    """Register the memory-operand form of a handler (see HANDLERS_MEM)."""
    return _registrar(HANDLERS_MEM, names)


def gp0() -> GuestFault:
    return GuestFault(GP, 0)


def ud() -> GuestFault:
    return GuestFault(UD)


# --- registers ----------------------------------------------------------------

def get_r8(cpu, r: int, rex: int) -> int:
    """Byte register r: AL..BL, then AH..BH without REX or SPL..DIL with any REX."""
    if r < 4 or rex:
        return cpu.regs[r] & 0xFF
    return (cpu.regs[r - 4] >> 8) & 0xFF


def set_r8(cpu, r: int, rex: int, value: int) -> None:
    regs = cpu.regs
    if r < 4 or rex:
        regs[r] = (regs[r] & ~0xFF) | (value & 0xFF)
    else:
        regs[r - 4] = (regs[r - 4] & ~0xFF00) | ((value & 0xFF) << 8)


def get_reg(cpu, r: int, size: int) -> int:
    return cpu.regs[r] & MASK[size]


def set_reg(cpu, r: int, size: int, value: int) -> None:
    """Write a 16/32/64-bit register; 32-bit writes zero the upper half (SDM Vol. 1 3.4.1.1)."""
    if size == 4:
        cpu.regs[r] = value & 0xFFFFFFFF
    elif size == 2:
        cpu.regs[r] = (cpu.regs[r] & ~0xFFFF) | (value & 0xFFFF)
    else:
        cpu.regs[r] = value & M64


def read_gpr(cpu, ins, r: int, size: int) -> int:
    """Register operand of any size (byte registers follow the REX rule)."""
    if size == 1:
        return get_r8(cpu, r, ins.rex)
    return cpu.regs[r] & MASK[size]


def write_gpr(cpu, ins, r: int, size: int, value: int) -> None:
    if size == 1:
        set_r8(cpu, r, ins.rex, value)
    else:
        set_reg(cpu, r, size, value)


# --- memory operands ----------------------------------------------------------------

def ea(cpu, ins) -> int:
    """Effective address (offset within the segment) of the ModRM memory operand."""
    a = ins.disp
    if ins.base >= 0:
        a += cpu.regs[ins.base]
    if ins.index >= 0:
        a += cpu.regs[ins.index] << ins.scale
    if ins.rip_relative:
        a += cpu.rip
    return a & ins.addr_mask


def seg_linear(cpu, seg: int, offset: int, size: int, write: bool) -> int:
    """Apply segment `seg` to `offset`: checks (SDM Vol. 3 5.3-5.6) and base.

    64-bit mode: only FS/GS have a base, and the address must be canonical
    (#SS(0) for stack references, else #GP(0)). Elsewhere the access must lie
    within the limit; in protected mode the segment must also be usable, and
    writable (writes) or readable (reads of code segments).
    """
    s = cpu.segs[seg]
    if cpu.mode == MODE_LONG:
        lin = offset + s.base if seg >= FS else offset
        lin &= M64
        top = lin >> 47
        if top and top != 0x1FFFF:
            raise GuestFault(SS_FAULT if seg == SS else GP, 0)
        return lin
    access = s.access
    if cpu.mode != MODE_REAL and cpu.mode != MODE_V86:
        if not access & 0x80:  # null or not-present cache
            raise GuestFault(SS_FAULT if seg == SS else GP, 0)
        if write:
            if access & 0x1A != 0x12:  # data segment, writable
                raise GuestFault(SS_FAULT if seg == SS else GP, 0)
        elif access & 0x1A == 0x18:  # execute-only code
            raise GuestFault(GP, 0)
    out_of_fast_path = offset + size - 1 > s.limit or access & 0x1C == 0x14  # beyond limit, or expand-down
    if out_of_fast_path and not check_limit(s, offset, size, bool(s.flags & 4)):
        raise GuestFault(SS_FAULT if seg == SS else GP, 0)
    return (s.base + offset) & 0xFFFFFFFF


def mem_linear(cpu, ins, size: int, write: bool) -> int:
    """Linear address of the ModRM memory operand (ea() inlined: this is on every memory access)."""
    a = ins.disp
    if ins.base >= 0:
        a += cpu.regs[ins.base]
    if ins.index >= 0:
        a += cpu.regs[ins.index] << ins.scale
    if ins.rip_relative:
        a += cpu.rip
    return seg_linear(cpu, ins.seg, a & ins.addr_mask, size, write)


def read_mem(cpu, mmu, ins, size: int) -> int:
    return mmu.read(mem_linear(cpu, ins, size, False), size, cpu.cpl == 3)


def write_mem(cpu, mmu, ins, size: int, value: int) -> None:
    mmu.write(mem_linear(cpu, ins, size, True), size, value & MASK[size], cpu.cpl == 3)


def read_E(cpu, mmu, ins, size: int) -> int:
    """The r/m operand's value."""
    if ins.is_mem:
        return mmu.read(mem_linear(cpu, ins, size, False), size, cpu.cpl == 3)
    if size == 1:
        return get_r8(cpu, ins.rm, ins.rex)
    return cpu.regs[ins.rm] & MASK[size]


def write_E(cpu, mmu, ins, size: int, value: int) -> None:
    if ins.is_mem:
        mmu.write(mem_linear(cpu, ins, size, True), size, value & MASK[size], cpu.cpl == 3)
    elif size == 1:
        set_r8(cpu, ins.rm, ins.rex, value)
    else:
        set_reg(cpu, ins.rm, size, value)


# --- flags ----------------------------------------------------------------

#: Right shift that brings a result's sign bit to SF's position (bit 7), by operand size.
SF_SHIFT = (0, 0, 8, 0, 24, 0, 0, 0, 56)


def szp(r: int, size: int) -> int:
    """SF, ZF and PF of a masked result."""
    return PARITY[r & 0xFF] | ((r >> SF_SHIFT[size]) & SF) | (ZF if r == 0 else 0)


def flags_add(cpu, a: int, b: int, full: int, size: int) -> int:
    """Set OSZAPC for a + b (+carry) = full; return the masked result."""
    mask = MASK[size]
    r = full & mask
    f = PARITY[r & 0xFF] | ((r >> SF_SHIFT[size]) & SF) | ((a ^ b ^ r) & AF)
    if r == 0:
        f |= ZF
    if full > mask:
        f |= CF
    if (a ^ r) & (b ^ r) & SIGN[size]:
        f |= OF
    cpu.rflags = (cpu.rflags & NOT_OSZAPC) | f
    return r


def flags_sub(cpu, a: int, b: int, full: int, size: int) -> int:
    """Set OSZAPC for a - b (-borrow) = full; return the masked result."""
    mask = MASK[size]
    r = full & mask
    f = PARITY[r & 0xFF] | ((r >> SF_SHIFT[size]) & SF) | ((a ^ b ^ r) & AF)
    if r == 0:
        f |= ZF
    if full < 0:
        f |= CF
    if (a ^ b) & (a ^ r) & SIGN[size]:
        f |= OF
    cpu.rflags = (cpu.rflags & NOT_OSZAPC) | f
    return r


def flags_logic(cpu, r: int, size: int) -> int:
    """AND/OR/XOR/TEST: CF=OF=0, AF cleared (undefined in the SDM; 0 on Intel)."""
    cpu.rflags = (cpu.rflags & NOT_OSZAPC) | PARITY[r & 0xFF] | ((r >> SF_SHIFT[size]) & SF) | (ZF if r == 0 else 0)
    return r


def _sf_ne_of(f: int) -> bool:
    return bool(f & SF) != bool(f & OF)


#: Condition codes 0..15 (SDM Vol. 1 Appendix B.1) as predicates on RFLAGS, in encoding order.
CONDITIONS = (
    lambda f: bool(f & OF), lambda f: not f & OF,
    lambda f: bool(f & CF), lambda f: not f & CF,
    lambda f: bool(f & ZF), lambda f: not f & ZF,
    lambda f: bool(f & (CF | ZF)), lambda f: not f & (CF | ZF),
    lambda f: bool(f & SF), lambda f: not f & SF,
    lambda f: bool(f & PF), lambda f: not f & PF,
    _sf_ne_of, lambda f: not _sf_ne_of(f),
    lambda f: bool(f & ZF) or _sf_ne_of(f), lambda f: not (f & ZF or _sf_ne_of(f)),
)


def condition(f: int, cc: int) -> bool:
    """Condition code cc on the flags value f."""
    return CONDITIONS[cc](f)


def round_rc(x: float, rc: int) -> int:
    """Round to an integer as the rounding-control field says; FCW.RC and MXCSR.RC share the encoding
    (SDM Vol. 1 4.8.4): 0 nearest-even, 1 down, 2 up, 3 toward zero."""
    if rc == 0:
        return round(x)
    if rc == 1:
        return math.floor(x)
    if rc == 2:
        return math.ceil(x)
    return math.trunc(x)


def iopl(cpu) -> int:
    return (cpu.rflags >> IOPL_SHIFT) & 3


def ip_mask(cpu, opsize: int) -> int:
    """Mask for a new instruction pointer: the operand size outside 64-bit mode."""
    return M64 if cpu.mode == MODE_LONG else MASK[opsize]


def branch(cpu, target: int) -> None:
    """Near branch to `target` (already masked): #GP(0) beyond the CS limit (SDM Vol. 2 JMP)."""
    if cpu.mode == MODE_LONG:
        top = target >> 47
        if top and top != 0x1FFFF:
            raise gp0()
    elif target > cpu.segs[1].limit:
        raise gp0()
    cpu.rip = target


def rewind(cpu, ins) -> None:
    """Point RIP back at `ins` (a REP instruction with iterations left runs again)."""
    cpu.rip = (cpu.rip - ins.length) & (M64 if cpu.code_bits == 64 else MASK[cpu.code_bits >> 3])
