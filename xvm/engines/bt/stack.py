"""Stack pushes and pops through SS (SDM Vol. 1 6.2, Vol. 3 5.3).

The stack-address size comes from `cpu.stack_bits` (SS.B, or 64 in 64-bit
mode); SP/ESP/RSP wrap at that width and the bits above it are kept. Every
access is checked against the SS limit (expand-down segments included) and
raises #SS(0), so a fault leaves RSP unchanged; the memory access comes
before the RSP update for the same reason. In 64-bit mode SS has no base or
limit and a non-canonical RSP raises #SS(0).

    push(cpu, mmu, cpu.rip, 8)      # CALL in 64-bit mode
    rip = pop(cpu, mmu, 8)          # RET
"""

from __future__ import annotations

from xvm.engines.bt.faults import stack_fault
from xvm.engines.bt.mmu import Mmu
from xvm.engines.bt.state import RSP, SS, CpuState, SegmentCache

_WIDTH_MASK = {16: 0xFFFF, 32: 0xFFFFFFFF, 64: (1 << 64) - 1}


def check_limit(seg: SegmentCache, offset: int, size: int, big: bool) -> bool:
    """True when [offset, offset+size) lies within the segment limit (SDM Vol. 3 5.3).

    Expand-down data segments (type bit 2) hold the offsets above the limit,
    up to 0xFFFF or 0xFFFFFFFF depending on `big` (the segment's B flag).
    """
    last = offset + size - 1
    if seg.access & 0x1C == 0x14:  # S=1, data, expand-down
        return offset > seg.limit and last <= (0xFFFFFFFF if big else 0xFFFF)
    return last <= seg.limit


def stack_linear(cpu: CpuState, offset: int, size: int) -> int:
    """Linear address of SS:offset for a `size`-byte stack access; #SS(0) if out of bounds."""
    return _frame_linear(cpu.segs[SS], cpu.stack_bits, offset, size, 0)


def push(cpu: CpuState, mmu: Mmu, value: int, size: int) -> None:
    """Push the low `size` bytes of `value`."""
    mask = _WIDTH_MASK[cpu.stack_bits]
    rsp = cpu.regs[RSP]
    offset = (rsp - size) & mask
    mmu.write(stack_linear(cpu, offset, size), size, value, cpu.cpl == 3)
    cpu.regs[RSP] = (rsp & ~mask) | offset


def pop(cpu: CpuState, mmu: Mmu, size: int) -> int:
    """Pop `size` bytes."""
    mask = _WIDTH_MASK[cpu.stack_bits]
    rsp = cpu.regs[RSP]
    offset = rsp & mask
    value = mmu.read(stack_linear(cpu, offset, size), size, cpu.cpl == 3)
    cpu.regs[RSP] = (rsp & ~mask) | ((offset + size) & mask)
    return value


def push_frame(cpu: CpuState, mmu: Mmu, ss: SegmentCache, bits: int, rsp: int, values: tuple, size: int,
               user: bool, fault_code: int) -> int:
    """Push `values` (first pushed first) on a stack that need not be the current one.

    Used by interrupt delivery and far CALL through gates, which build their
    frame on the new SS before committing any register; returns the new
    stack offset. Limit or canonical violations raise #SS(fault_code).
    """
    mask = _WIDTH_MASK[bits]
    for value in values:
        rsp = (rsp - size) & mask
        mmu.write(_frame_linear(ss, bits, rsp, size, fault_code), size, value, user)
    return rsp


def read_frame(cpu: CpuState, mmu: Mmu, skip: int, count: int, size: int) -> list:
    """Read `count` stack slots of `size` bytes at SS:RSP+skip without popping (RET/IRET)."""
    mask = _WIDTH_MASK[cpu.stack_bits]
    ss = cpu.segs[SS]
    user = cpu.cpl == 3
    offset = cpu.regs[RSP] + skip
    values = []
    for _ in range(count):
        offset &= mask
        values.append(mmu.read(_frame_linear(ss, cpu.stack_bits, offset, size, 0), size, user))
        offset += size
    return values


def _frame_linear(ss: SegmentCache, bits: int, offset: int, size: int, fault_code: int) -> int:
    if bits == 64:
        top = offset >> 47
        if top and top != 0x1FFFF:
            raise stack_fault(fault_code)
        return offset
    if not check_limit(ss, offset, size, bool(ss.flags & 4)):
        raise stack_fault(fault_code)
    return (ss.base + offset) & 0xFFFFFFFF
