"""The bt interpreter: fetch, decode and execute one guest instruction.

    execute_one(cpu, mmu, io)      # one instruction at CS:RIP, cpu.icount += 1
    disassemble_at(cpu, mmu)       # "f000:fff0  ea 5b e0 00 f0  jmp 0F000h:0E05Bh"

The decoder (decoder/decoder.py) and the handlers (ops/*.py) are bound once,
here, by handler name: each table row gets its register-form handler `fn`,
its memory-form handler `fn_mem` (a specialisation where ops/ registered one)
and `fn_locked` (the memory form under BUS_LOCK, for LOCK and XCHG), and the
decoder stores the right one in `ins.fn`; dispatch is `ins.fn(cpu, mmu, ins,
io)` with no lookup at run time. The translator (translate/) runs the same
handlers from the same decoded instructions; this interpreter is the
reference path and single-stepper.

Not modelled: debug-register breakpoints (the TF single-step trap is, in
execute_one; the run loop steps TF code through it), alignment checks (#AC),
VME/PVI, SSE3 and later, packed floating-point arithmetic, DAZ/FTZ, the
x87's transcendental/BCD/FSAVE/FCMOV instructions and its 64-bit precision
(ops/x87.py computes in binary64). CPUID (ops/system.py) advertises none of
the missing features.
"""

from __future__ import annotations

import threading

from xvm.arch.x86.regs import RFLAGS_TF
from xvm.engines.bt import interrupts
from xvm.engines.bt.decoder.decoder import OPDEFS, Instr, NeedMoreBytes, decode
from xvm.engines.bt.decoder.disasm import format_instr
from xvm.engines.bt.faults import DB, GP, SS_FAULT, GuestFault
from xvm.engines.bt.ops import alu, flow, mmx, sse, sse_fp, string, system, x87  # noqa: F401 - registers the handlers
from xvm.engines.bt.ops import io as port_io  # noqa: F401 - registers the handlers
from xvm.engines.bt.ops.common import HANDLERS, HANDLERS_MEM
from xvm.engines.bt.state import CS, MODE_REAL, RSP, CpuState

PAGE = 4096
MAX_LENGTH = 15
ACCESS_EXEC = 2
_CACHE_LIMIT = 1 << 16
_IP_MASK = {16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}
DR6_BS = 1 << 14  # single-step
#: Instructions whose interrupt delivery clears TF: no single-step trap after them.
_TRAPS_CLEAR_TF = frozenset(("int", "int3", "into", "int1"))


def _bind() -> None:
    """Attach each table row's handler; a row without one would be a silent #UD, so refuse it."""
    missing = [d.handler for d in OPDEFS if d.handler not in HANDLERS]
    if missing:
        raise RuntimeError(f"opcode table rows without handlers: {missing}")
    for d in OPDEFS:
        d.fn = HANDLERS[d.handler]
        d.fn_mem = HANDLERS_MEM.get(d.handler, d.fn)
        d.fn_locked = _locked(d.fn_mem) if d.lock else d.fn_mem


def _locked(fn):
    """Run `fn` holding the bus lock, so that locked read-modify-writes of vCPU threads do not interleave.

    Python threads interleave between bytecodes, so LOCK CMPXCHG on one vCPU
    could otherwise split another's; plain accesses need no lock (they are
    not atomic on hardware either beyond their own size).
    """
    def locked(cpu, mmu, ins, io):
        with BUS_LOCK:
            fn(cpu, mmu, ins, io)
    return locked


#: The one bus lock of the machine (all vCPU threads of all VMs in this process: locked instructions are rare).
BUS_LOCK = threading.Lock()
_bind()

_cache: dict[int, Instr] = {}


def fetch_decode(cpu: CpuState, mmu) -> Instr:
    """Decode the instruction at CS:RIP through the MMU (instruction fetch permissions, #PF, CS limit).

    A cache hit re-fetches just the instruction's bytes and compares them with
    the decoded ones: cheaper than decoding, and never stale.
    """
    bits = cpu.code_bits
    if bits == 64:
        linear = cpu.rip
    else:
        linear = (cpu.segs[CS].base + cpu.rip) & 0xFFFFFFFF
    user = cpu.cpl == 3
    i286 = cpu.i286
    key = (mmu.translate(linear, ACCESS_EXEC, user) << 2) | (3 if i286 else bits >> 5)
    ins = _cache.get(key)
    if ins is None or mmu.fetch_bytes(linear, ins.length, user) != ins.raw:
        room = PAGE - (linear & (PAGE - 1))
        try:
            ins = decode(mmu.fetch_bytes(linear, room if room < MAX_LENGTH else MAX_LENGTH, user), bits, i286)
        except NeedMoreBytes:
            ins = decode(mmu.fetch_bytes(linear, MAX_LENGTH, user), bits, i286)
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[key] = ins
    if bits != 64 and cpu.rip + ins.length - 1 > cpu.segs[CS].limit:
        raise GuestFault(GP, 0)
    return ins


def execute_one(cpu: CpuState, mmu, io) -> None:
    """Execute one instruction at CS:RIP; on a fault restore RIP/RSP/RFLAGS and re-raise.

    With RFLAGS.TF set at its start, a completed instruction is followed by
    the single-step trap (#DB with DR6.BS, RIP after the instruction; SDM
    Vol. 3 18.3.1.4), except after INT n/INT3/INTO/INT1 (their delivery
    clears TF) and after MOV SS/POP SS/STI, whose shadow delays it one
    instruction. A fault while delivering it propagates to the run loop.
    """
    rip = cpu.rip
    rsp = cpu.regs[RSP]
    rflags = cpu.rflags
    cpu.interrupt_shadow = False
    try:
        ins = fetch_decode(cpu, mmu)
        cpu.rip = (rip + ins.length) & _IP_MASK[cpu.code_bits]
        ins.fn(cpu, mmu, ins, io)
    except GuestFault as fault:
        cpu.rip = rip
        cpu.regs[RSP] = rsp
        cpu.rflags = rflags
        if fault.vector == SS_FAULT and cpu.i286 and cpu.mode == MODE_REAL:
            raise GuestFault(GP, 0) from None  # a real-mode 286 reports stack overruns as int 13 too
        raise
    cpu.icount += 1
    if rflags & RFLAGS_TF and not cpu.interrupt_shadow and ins.op.mnemonic not in _TRAPS_CLEAR_TF:
        cpu.dr[6] |= DR6_BS
        cpu.halted = False
        interrupts.deliver(cpu, mmu, DB, None, interrupts.KIND_EXCEPTION, cpu.rip)


def step(cpu: CpuState, mmu, io) -> None:
    """Alias of execute_one (the name the issue uses)."""
    execute_one(cpu, mmu, io)


def disassemble_at(cpu: CpuState, mmu) -> str:
    """`cs:rip  bytes  text` for --trace; a fetch fault or invalid opcode is shown, not raised."""
    where = f"{cpu.segs[CS].selector:04x}:{cpu.rip:0{4 if cpu.code_bits == 16 else 8}x}"
    try:
        ins = fetch_decode(cpu, mmu)
    except GuestFault as fault:
        return f"{where}  <{fault!r}>"
    return f"{where}  {ins.raw.hex(' '):<30} {format_instr(ins, cpu.rip + ins.length)}"
