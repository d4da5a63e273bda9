"""Port I/O: IN/OUT and the permission check INS/OUTS share.

Protected mode with CPL > IOPL, and virtual-8086 mode always, consult the
I/O permission bitmap of the current 32/64-bit TSS (SDM Vol. 1 19.5.2):
every bit for the accessed ports must be clear, and bytes beyond the TSS
limit count as set. The port-I/O object is injected: `io.read(port, size)`,
`io.write(port, size, value)`.
"""

from __future__ import annotations

from xvm.engines.bt.ops.common import MASK, gp0, handles, iopl, set_r8, set_reg
from xvm.engines.bt.state import MODE_REAL, MODE_V86

RAX, RDX = 0, 2
TSS_IOMAP_BASE = 0x66  # offset of the I/O map base field in a 32/64-bit TSS


def check_io(cpu, mmu, port: int, size: int) -> None:
    """#GP(0) unless the current privilege may access ports port..port+size-1."""
    mode = cpu.mode
    if mode == MODE_REAL or (mode != MODE_V86 and cpu.cpl <= iopl(cpu)):
        return
    tr = cpu.tr
    if tr.access & 0x1D != 0x09 or tr.limit < TSS_IOMAP_BASE + 1:  # system type 9/11 (32/64-bit TSS)
        raise gp0()
    base = mmu.read(tr.base + TSS_IOMAP_BASE, 2, False)
    offset = base + (port >> 3)
    if offset + 1 > tr.limit:
        raise gp0()
    bits = mmu.read(tr.base + offset, 2, False)
    if (bits >> (port & 7)) & ((1 << size) - 1):
        raise gp0()


def _port(ins, cpu) -> int:
    return cpu.regs[RDX] & 0xFFFF if "DX" in ins.op.operands else ins.imm & 0xFF


@handles("in_AL_Ib", "in_eAX_Ib", "in_AL_DX", "in_eAX_DX")
def in_(cpu, mmu, ins, io):
    size = 1 if ins.op.operands[0] == "AL" else min(ins.opsize, 4)
    port = _port(ins, cpu)
    check_io(cpu, mmu, port, size)
    value = io.read(port, size) & MASK[size]
    if size == 1:
        set_r8(cpu, RAX, 0, value)
    else:
        set_reg(cpu, RAX, size, value)


@handles("out_Ib_AL", "out_Ib_eAX", "out_DX_AL", "out_DX_eAX")
def out(cpu, mmu, ins, io):
    size = 1 if ins.op.operands[1] == "AL" else min(ins.opsize, 4)
    port = _port(ins, cpu)
    check_io(cpu, mmu, port, size)
    io.write(port, size, cpu.regs[RAX] & MASK[size])
