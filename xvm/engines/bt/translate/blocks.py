"""Finding guest basic blocks: which instructions a translated block may hold.

A block is a straight run of instructions decoded once from guest memory,
starting at one linear address and ending

* *after* a near control transfer (JMP/Jcc/CALL/RET/LOOP/JrCXZ): the run loop
  looks up (or follows the chain link to) the block at the new RIP; and after
  a REP string instruction, which may stop part-way and point RIP back at
  itself so that interrupts can come between iterations (SDM Vol. 1 7.3.9.2);
* *after* a sensitive instruction (below), which is emulated by its handler
  with every CPL/IOPL check the SDM gives, and then hands control back to the
  monitor's loop (trap-and-emulate: the loop re-examines interrupts, the
  interrupt shadow, HLT and TF, and looks the next block up afresh because
  the mode or CS may have changed; after the RESUMABLE ones, which change
  none of that, only when IF came on, an interrupt shadow began, HLT or TF).
  The stats count these as the monitor's interventions, not as translated
  execution;
* before an instruction that crosses the page end or the CS limit, wraps IP,
  or does not decode (the interpreter raises the precise fault when it gets
  there); and after MAX_BLOCK_INSTRUCTIONS.

A block therefore never spans two physical pages, so "which blocks does a
store to page P hit" is a per-page question, and never contains an
instruction that changes the operating mode, CS, IF or the interrupt shadow,
except as its last, so the code it was translated for stays right until then.
"""

from __future__ import annotations

from typing import Optional

from xvm.engines.bt.decoder.decoder import Instr, NeedMoreBytes, decode
from xvm.engines.bt.faults import GuestFault

MAX_BLOCK_INSTRUCTIONS = 64

#: Sensitive mnemonics: only ever the last instruction of a block. They change
#: the operating mode, CS, IF, the interrupt shadow or paging (POPF, IRET,
#: CLI/STI, MOV SS, LSS, far transfers, INT, SYSCALL..., MOV CRn/DRn, LMSW,
#: CLTS, INVLPG, WRMSR), touch devices (IN/OUT/INS/OUTS), read the time
#: (RDTSC/RDTSCP: the block settles the instruction count before its last
#: instruction, so they read it exactly), stop the CPU (HLT), spin-wait
#: (PAUSE: the monitor charges it virtual time, see clock.PAUSE_NS) or are
#: privileged system instructions.
SENSITIVE = frozenset((
    "hlt", "cli", "sti", "popf", "iret", "int", "int1", "int3", "into", "retf",
    "in", "out", "insb", "insw", "outsb", "outsw",
    "syscall", "sysret", "sysenter", "sysexit", "swapgs",
    "lgdt", "lidt", "sgdt", "sidt", "lldt", "ltr", "sldt", "str", "smsw", "lmsw", "clts", "invlpg",
    "lar", "lsl", "verr", "verw", "arpl", "lss",
    "wrmsr", "rdmsr", "cpuid", "rdtsc", "rdtscp", "wbinvd", "invd", "ud2", "pause",
))
#: Sensitive instructions after which translated execution goes on, chained, when
#: the monitor has nothing to look at (no interrupt window opened, no interrupt
#: shadow, no HLT, TF clear, no device access): they change neither the
#: operating mode, CS, nor paging, so the code after them and the chain links
#: stay right. Linux's busy-waits (RDTSC and PAUSE in a loop, CLI/STI pairs)
#: then cost no trip through the monitor's loop per iteration.
RESUMABLE = frozenset((
    "cli", "sti", "popf", "pause", "rdtsc", "rdtscp", "cpuid", "rdmsr",
    "in", "out", "insb", "insw", "outsb", "outsw",
    "lar", "lsl", "verr", "verw", "sgdt", "sidt", "sldt", "str", "smsw", "swapgs", "wbinvd", "invd", "clts",
))
#: Far forms of JMP/CALL (through a far pointer: mode and CS change).
FAR_OPERANDS = frozenset(("Ap", "Mp"))
#: Near control transfers: end the block after themselves.
BRANCHES = frozenset(("jmp", "call", "ret", "loop", "loope", "loopne", "jcxz", "ja", "jae", "jb", "jbe", "je",
                      "jg", "jge", "jl", "jle", "jne", "jno", "jnp", "jns", "jo", "jp", "js"))
#: String instructions (the REP-able ones inside blocks).
STRING_OPS = frozenset(("movsb", "movsw", "stosb", "stosw", "lodsb", "lodsw", "cmpsb", "cmpsw", "scasb", "scasw"))
#: Instructions that store to memory without a ModRM memory operand; after any
#: store the block checks whether it hit translated code (self-modifying code).
IMPLICIT_STORES = frozenset(("push", "pusha", "pushf", "call", "enter", "movsb", "movsw", "stosb", "stosw"))
#: Instructions that move RSP and touch memory: they may fault after updating RSP.
STACK_OPS = frozenset(("push", "pop", "pusha", "popa", "pushf", "call", "ret", "enter", "leave"))
#: SREG encoding of SS (MOV SS / POP SS set the interrupt shadow).
_SS = 2


def is_sensitive(ins: Instr) -> bool:
    """True when `ins` must end its block and return to the monitor (see SENSITIVE)."""
    op = ins.op
    mnemonic = op.mnemonic
    if mnemonic in SENSITIVE:
        return True
    operands = op.operands
    if mnemonic == "mov":
        # MOV to/from CRn/DRn; MOV SS (interrupt shadow).
        return operands[0][0] in "CD" or operands[-1][0] in "CD" or (operands[0] == "Sw" and ins.reg & 7 == _SS)
    if mnemonic == "pop":
        return operands == ("SS",)
    return mnemonic in ("jmp", "call") and operands[0] in FAR_OPERANDS


def touches_memory(ins: Instr) -> bool:
    """A ModRM memory operand or a moffs one (MOV AL/rAX <-> [moffs], which have no ModRM)."""
    return ins.is_mem or any(spec[0] == "O" for spec in ins.op.operands)


def may_store(ins: Instr) -> bool:
    """True when `ins` may write guest memory (then a block checks for self-modification after it)."""
    return touches_memory(ins) or ins.op.mnemonic in IMPLICIT_STORES


def may_fault_after_commit(ins: Instr) -> bool:
    """True when `ins` may fault after changing RSP or RFLAGS (a memory access after the update).

    Such instructions need RSP and RFLAGS saved before them so that a fault
    leaves the state as it was (execute_one restores the same two).
    Register-only instructions fault, if at all, before changing anything.
    """
    mnemonic = ins.op.mnemonic
    return touches_memory(ins) or mnemonic in STACK_OPS or mnemonic in STRING_OPS or is_sensitive(ins)


def ends_block(ins: Instr) -> bool:
    """True when the block must end after `ins`: a near branch, or a REP string instruction."""
    mnemonic = ins.op.mnemonic
    return mnemonic in BRANCHES or (ins.rep != 0 and mnemonic in STRING_OPS)


def scan(code: bytes, rip: int, bits: int, cs_limit: Optional[int]) -> list:
    """Decode the block at the start of `code` (the rest of the page): a list of Instr, maybe empty.

    `rip` is the offset of code[0] in CS; `cs_limit` the highest offset the
    block may execute (None in 64-bit mode, where CS has no limit).
    """
    view = memoryview(code)
    ip_mask = 0xFFFF if bits == 16 else (0xFFFFFFFF if bits == 32 else (1 << 64) - 1)
    out = []
    pos = 0
    while len(out) < MAX_BLOCK_INSTRUCTIONS:
        try:
            ins = decode(view[pos:], bits)
        except (NeedMoreBytes, GuestFault):
            break
        end = rip + pos + ins.length
        if end - 1 > ip_mask or (cs_limit is not None and end - 1 > cs_limit):
            break
        out.append(ins)
        pos += ins.length
        if ends_block(ins) or is_sensitive(ins):
            break
    return out
