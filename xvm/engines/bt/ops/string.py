"""String instructions (MOVS CMPS SCAS LODS STOS INS OUTS) with REP/REPE/REPNE.

The counter and index registers follow the address size (SDM Vol. 2 REP).
A REP instruction runs at most one chunk per call (up to a page of data or
`MAX_ITERATIONS` elements) and, with work left, rewinds RIP to itself: the
run loop can take interrupts between chunks and a fault in one element
leaves RSI/RDI/RCX describing the elements already done, so re-executing
the instruction resumes it exactly (SDM Vol. 1 7.3.9.1). Forward REP MOVS
and REP STOS run in bulk with `read_bytes`/`write_bytes` (a third of a Linux
boot's instructions are REP iterations, GUEST.md); every element counts as
one retired instruction in `cpu.icount`.
"""

from __future__ import annotations

from xvm.engines.bt.ops.common import DF, MASK, ZF, flags_sub, handles, rewind, seg_linear
from xvm.engines.bt.ops.io import check_io
from xvm.engines.bt.state import ES

RAX, RCX, RSI, RDI = 0, 1, 6, 7
MAX_ITERATIONS = 4096
PAGE = 4096


def _advance(cpu, r: int, amask: int, delta: int) -> None:
    v = cpu.regs[r]
    cpu.regs[r] = (v & ~amask) | ((v + delta) & amask) if amask != 0xFFFFFFFF else (v + delta) & amask


def _bulk(cpu, mmu, ins, size: int, count: int, movs: bool) -> int:
    """Forward REP MOVS/STOS in one block; return elements done (0: use the element loop)."""
    regs = cpu.regs
    amask = ins.addr_mask
    di = regs[RDI] & amask
    n = min(count, MAX_ITERATIONS, (amask + 1 - di) // size)
    dst = seg_linear(cpu, ES, di, size, True)
    n = min(n, (PAGE - (dst & (PAGE - 1))) // size)
    if movs:
        si = regs[RSI] & amask
        n = min(n, (amask + 1 - si) // size)
        src = seg_linear(cpu, ins.seg, si, size, False)
        n = min(n, (PAGE - (src & (PAGE - 1))) // size)
        if 0 < dst - src < n * size:
            n = (dst - src) // size  # overlapping forward copy: element semantics repeat the pattern
    if n <= 1:
        return 0
    nbytes = n * size
    user = cpu.cpl == 3
    seg_linear(cpu, ES, di, nbytes, True)
    if movs:
        seg_linear(cpu, ins.seg, si, nbytes, False)
        data = mmu.read_bytes(src, nbytes, user)
    else:
        data = (regs[RAX] & MASK[size]).to_bytes(size, "little") * n
    mmu.write_bytes(dst, data, user)
    _advance(cpu, RDI, amask, nbytes)
    if movs:
        _advance(cpu, RSI, amask, nbytes)
    return n


def _make_string(kind: str, byte: bool):
    movs = kind == "movs"

    def h(cpu, mmu, ins, io):
        size = 1 if byte else ins.opsize
        regs = cpu.regs
        amask = ins.addr_mask
        step = -size if cpu.rflags & DF else size
        rep = ins.rep
        if kind in ("ins", "outs"):
            check_io(cpu, mmu, regs[2] & 0xFFFF, size)
        if rep:
            count = regs[RCX] & amask
            if count == 0:
                return
        else:
            count = 1
        user = cpu.cpl == 3
        done = 0
        if rep and step > 0 and (movs or kind == "stos"):
            done = _bulk(cpu, mmu, ins, size, count, movs)
        if not done:
            limit = min(count, MAX_ITERATIONS)
            src_seg = ins.seg
            while done < limit:
                if kind == "movs":
                    v = mmu.read(seg_linear(cpu, src_seg, regs[RSI] & amask, size, False), size, user)
                    mmu.write(seg_linear(cpu, ES, regs[RDI] & amask, size, True), size, v, user)
                    _advance(cpu, RSI, amask, step)
                    _advance(cpu, RDI, amask, step)
                elif kind == "stos":
                    mmu.write(seg_linear(cpu, ES, regs[RDI] & amask, size, True), size, regs[RAX] & MASK[size],
                              user)
                    _advance(cpu, RDI, amask, step)
                elif kind == "lods":
                    v = mmu.read(seg_linear(cpu, src_seg, regs[RSI] & amask, size, False), size, user)
                    if size == 1:
                        regs[RAX] = (regs[RAX] & ~0xFF) | v
                    elif size == 2:
                        regs[RAX] = (regs[RAX] & ~0xFFFF) | v
                    else:
                        regs[RAX] = v
                    _advance(cpu, RSI, amask, step)
                elif kind == "ins":
                    lin = seg_linear(cpu, ES, regs[RDI] & amask, size, True)
                    mmu.translate(lin, 1, user)  # fault before the port read has side effects
                    mmu.write(lin, size, io.read(regs[2] & 0xFFFF, size) & MASK[size], user)
                    _advance(cpu, RDI, amask, step)
                elif kind == "outs":
                    v = mmu.read(seg_linear(cpu, src_seg, regs[RSI] & amask, size, False), size, user)
                    io.write(regs[2] & 0xFFFF, size, v)
                    _advance(cpu, RSI, amask, step)
                else:  # cmps / scas: compare, then REPE/REPNE test ZF
                    if kind == "cmps":
                        a = mmu.read(seg_linear(cpu, src_seg, regs[RSI] & amask, size, False), size, user)
                        b = mmu.read(seg_linear(cpu, ES, regs[RDI] & amask, size, False), size, user)
                        _advance(cpu, RSI, amask, step)
                    else:
                        a = regs[RAX] & MASK[size]
                        b = mmu.read(seg_linear(cpu, ES, regs[RDI] & amask, size, False), size, user)
                    _advance(cpu, RDI, amask, step)
                    flags_sub(cpu, a, b, a - b, size)
                    done += 1
                    if rep:
                        _advance(cpu, RCX, amask, -1)
                        if bool(cpu.rflags & ZF) != (rep == 0xF3):
                            count = done  # termination condition met
                            break
                    continue
                done += 1
                if rep:
                    _advance(cpu, RCX, amask, -1)
        elif rep:
            _advance(cpu, RCX, amask, -done)
        cpu.icount += done - 1
        if rep and done < count:
            rewind(cpu, ins)  # more to do: run this instruction again
    return h


for _kind, _names in (("movs", ("movsb_Yb_Xb", "movsw_Yv_Xv")), ("cmps", ("cmpsb_Xb_Yb", "cmpsw_Xv_Yv")),
                      ("scas", ("scasb_AL_Yb", "scasw_rAX_Yv")), ("lods", ("lodsb_AL_Xb", "lodsw_rAX_Xv")),
                      ("stos", ("stosb_Yb_AL", "stosw_Yv_rAX")), ("ins", ("insb_Yb_DX", "insw_Yz_DX")),
                      ("outs", ("outsb_DX_Xb", "outsw_DX_Xz"))):
    handles(_names[0])(_make_string(_kind, True))
    handles(_names[1])(_make_string(_kind, False))

