"""Turning a decoded block into one Python function.

The function the run loop calls for a block is straight-line code calling the
opcode table's handlers with instructions decoded once at translation time.
No decoding, no dispatch through dicts, no allocation happens per
instruction; handlers, decoded instructions and RIP values are closure cells
(STYLE.md 13). Per instruction the code does only what that instruction
needs (flags computed at translation time from the decoded form):

    def block():
        try:
            f0(cpu, mmu, i0, io)      # mov eax, ebx: nothing else to do
            sp = regs[4]              # add [esi], eax may fault after setting
            fl = cpu.rflags           #   RFLAGS: keep RSP/RFLAGS to restore
            f1(cpu, mmu, i1, io)
            if smc[0]:                # it stored: did that hit translated code?
                cpu.rip = e1
                cpu.icount += 2
                return
            cpu.rip = e2              # the last instruction (a branch) and
            f2(cpu, mmu, i2, io)      #   RIP-relative operands read RIP
        except Exception as exc:
            k, saved = L[exc.__traceback__.tb_lineno]
            ...                       # precise state of instruction k, re-raise
        cpu.icount += 3

Handlers expect RIP to point past their instruction only when they read it
(branches, CALL, RIP-relative operands, REP string restarts; every one of
those is either the block's last instruction or flagged RIP-relative). A
fault is located by the line it came through — no per-instruction counter
— and leaves RIP at the faulting instruction, RSP and RFLAGS as before it
(as execute_one does), and the instructions before it retired.

The source depends only on the block's *shape* (per instruction: saves,
RIP, store check), so it is compiled once per shape and every block of that
shape is a new closure over its own cells: translating a block costs a
decode and a closure, not a `compile()`.
"""

from __future__ import annotations

from typing import Callable

from xvm.engines.bt.translate.blocks import may_fault_after_commit, may_store

#: Per-instruction shape bits.
SAVE = 1    # save RSP/RFLAGS before it (it may fault after changing them)
RIP = 2     # set RIP past it before the call (it reads RIP)
CHECK = 4   # check for a store into translated code after it
#: Compiled factories by block shape.
_FACTORIES: dict = {}


def block_shape(instrs: list) -> tuple:
    """The per-instruction bits the generated source depends on."""
    last = len(instrs) - 1
    shape = []
    for k, ins in enumerate(instrs):
        bits = 0
        if may_fault_after_commit(ins):
            bits |= SAVE
        if k == last or ins.rip_relative:
            bits |= RIP
        if k != last and may_store(ins):
            bits |= CHECK
        shape.append(bits)
    return tuple(shape)


def _source(shape: tuple) -> tuple:
    """(source, {line number: (instruction index, RSP/RFLAGS saved)}) of a factory."""
    n = len(shape)
    names = ", ".join(f"f{k}" for k in range(n))
    ins = ", ".join(f"i{k}" for k in range(n))
    ends = ", ".join(f"e{k}" for k in range(n))
    lines = [
        "def factory(cpu, mmu, io, smc, F, I, E, R, L):",
        f"    {names}, = F",
        f"    {ins}, = I",
        f"    {ends}, = E",
        "    regs = cpu.regs",
        "    def block():",
        "        sp = fl = 0",
        "        try:",
    ]
    where = {}
    last = n - 1
    for k, bits in enumerate(shape):
        if bits & SAVE:
            lines += ["            sp = regs[4]", "            fl = cpu.rflags"]
        if bits & RIP:
            lines.append(f"            cpu.rip = e{k}")
        if k == last and k:
            # Settle the count first: a sensitive last instruction (RDTSC) reads it.
            lines.append(f"            cpu.icount += {k}")
        lines.append(f"            f{k}(cpu, mmu, i{k}, io)")
        where[len(lines)] = (k, bool(bits & SAVE))
        if bits & CHECK:
            lines += [
                "            if smc[0]:",
                f"                cpu.rip = e{k}",
                f"                cpu.icount += {k + 1}",
                "                return",
            ]
    lines += [
        "        except Exception as exc:",
        "            k, saved = L[exc.__traceback__.tb_lineno]",
        "            cpu.rip = R[k]",
        "            if saved:",
        "                regs[4] = sp",
        "                cpu.rflags = fl",
        f"            if k != {last}:",
        "                cpu.icount += k",
        "            raise",
        "        cpu.icount += 1",
        "    return block",
    ]
    return "\n".join(lines) + "\n", where


def _factory(shape: tuple) -> tuple:
    made = _FACTORIES.get(shape)
    if made is None:
        source, where = _source(shape)
        namespace: dict = {}
        exec(compile(source, f"<bt block {len(shape)}>", "exec"), namespace)
        made = _FACTORIES[shape] = (namespace["factory"], where)
    return made


def generate(instrs: list, rip: int, cpu, mmu, io, smc: list) -> Callable[[], None]:
    """The function running `instrs` (decoded from offset `rip` of CS) on `cpu`.

    It returns early, right after a store, when the store set `smc[0]` (the
    guest wrote to translated code, maybe this very block).
    """
    starts = []
    ends = []
    for ins in instrs:
        starts.append(rip)
        rip += ins.length
        ends.append(rip)
    factory, where = _factory(block_shape(instrs))
    fns = tuple(ins.fn for ins in instrs)
    fn = factory(cpu, mmu, io, smc, fns, tuple(instrs), tuple(ends), tuple(starts), where)
    # Its own code object (a copy, not a compile): PyPy's JIT counts and traces per code
    # object, so a hot block is compiled for its own handlers instead of guarding on
    # whichever block of its shape got hot first.
    fn.__code__ = fn.__code__.replace()
    return fn
