"""Turning a decoded block into one Python function.

The function the run loop calls for a block of n instructions is straight-line
code: for each instruction, set RIP past it (what the handler expects: SDM
RIP-relative addressing, CALL's return address, traps) and call the opcode
table's handler with the instruction decoded once at translation time. No
decoding, no dispatch through dicts, no allocation happens per instruction;
handlers, decoded instructions and RIP values are closure cells (STYLE.md 13):

    def block():
        k = 0
        try:
            sp = regs[4]              # RSP and RFLAGS before the instruction,
            fl = cpu.rflags           # restored if it faults (as execute_one does)
            cpu.rip = e0
            f0(cpu, mmu, i0, io)
            k = 1
            if smc[0]:                # i0 may store: did it hit translated code?
                cpu.icount += 1
                return 1
            sp = regs[4]
            fl = cpu.rflags
            cpu.rip = e1
            f1(cpu, mmu, i1, io)
        except BaseException:
            cpu.rip = R[k]            # precise state of the faulting instruction
            regs[4] = sp
            cpu.rflags = fl
            cpu.icount += k           # the instructions before it retired
            counters.translated_instructions += k
            raise
        cpu.icount += 2
        return 2

The source depends only on the block's *shape* (length, and after which
instructions a store check is needed), so it is compiled once per shape and
every block of that shape is a new closure over its own cells: translating a
block costs a decode and a closure, not a `compile()`.
"""

from __future__ import annotations

from typing import Callable

from xvm.engines.bt.translate.blocks import may_store

#: Compiled factories by block shape.
_FACTORIES: dict = {}


def block_shape(instrs: list) -> tuple:
    """(length, store-check flags): what the generated source depends on.

    The last instruction needs no check: the block ends after it anyway.
    """
    return (len(instrs),) + tuple(may_store(ins) for ins in instrs[:-1])


def _source(shape: tuple) -> str:
    n = shape[0]
    checks = shape[1:]
    fs = ", ".join(f"f{k}" for k in range(n))
    ins = ", ".join(f"i{k}" for k in range(n))
    es = ", ".join(f"e{k}" for k in range(n))
    lines = [
        "def factory(cpu, mmu, io, smc, counters, F, I, E, R):",
        f"    {fs}, = F",
        f"    {ins}, = I",
        f"    {es}, = E",
        "    regs = cpu.regs",
        "    def block():",
        "        k = 0",
        "        try:",
    ]
    for k in range(n):
        if k:
            lines.append(f"            k = {k}")
            if checks[k - 1]:
                lines += [
                    "            if smc[0]:",
                    f"                cpu.icount += {k}",
                    f"                counters.translated_instructions += {k}",
                    f"                return {k}",
                ]
        lines += [
            "            sp = regs[4]",
            "            fl = cpu.rflags",
            f"            cpu.rip = e{k}",
            f"            f{k}(cpu, mmu, i{k}, io)",
        ]
    lines += [
        "        except BaseException:",
        "            cpu.rip = R[k]",
        "            regs[4] = sp",
        "            cpu.rflags = fl",
        "            cpu.icount += k",
        "            counters.translated_instructions += k",
        "            raise",
        f"        cpu.icount += {n}",
        f"        counters.translated_instructions += {n}",
        f"        return {n}",
        "    return block",
    ]
    return "\n".join(lines) + "\n"


def _factory(shape: tuple) -> Callable:
    factory = _FACTORIES.get(shape)
    if factory is None:
        namespace: dict = {}
        exec(compile(_source(shape), f"<bt block shape {shape[0]}>", "exec"), namespace)
        factory = _FACTORIES[shape] = namespace["factory"]
    return factory


def generate(instrs: list, rip: int, cpu, mmu, io, smc: list, counters) -> Callable[[], int]:
    """The function running `instrs` (decoded from offset `rip` of CS) on `cpu`; returns instructions retired.

    It returns early, after the store, when a store set `smc[0]` (the guest
    wrote to translated code, maybe this very block).
    """
    starts = []
    ends = []
    for ins in instrs:
        starts.append(rip)
        rip += ins.length
        ends.append(rip)
    fns = tuple(ins.fn for ins in instrs)
    return _factory(block_shape(instrs))(cpu, mmu, io, smc, counters, fns, tuple(instrs), tuple(ends), tuple(starts))
