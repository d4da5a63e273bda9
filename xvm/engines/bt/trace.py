"""`xvm run --engine bt --trace`: one line per guest instruction.

Each line is the retired-instruction count (the virtual time base), CS:RIP,
and the instruction's bytes and disassembly, e.g.

    0000000012 f000:fff0  ea 5b e0 00 f0                 jmp 0F000h:0E05Bh

Tracing runs every instruction through the interpreter (the reference
path), so two runs of the same guest with the same inputs give identical
traces: a diff of two traces is the determinism test.
"""

from __future__ import annotations

from xvm.engines.bt.cpu import disassemble_at


def trace_line(cpu, mmu) -> str:
    """The trace line of the instruction at CS:RIP (before it executes)."""
    return f"{cpu.icount:010d} {disassemble_at(cpu, mmu)}"
