"""Control transfer and stack instructions: Jcc/JMP/CALL/RET/LOOP, PUSH/POP, ENTER/LEAVE.

Near branches mask the target to the operand size outside 64-bit mode and
check it against the CS limit (#GP(0)) before any state changes. Far
transfers, segment-register loads and interrupts go through segments.py
and interrupts.py, which own descriptor checks and privilege changes.
"""

from __future__ import annotations

from xvm.engines.bt import interrupts, segments
from xvm.engines.bt.decoder.table import CC_NAMES
from xvm.engines.bt.faults import BP, DB, OF
from xvm.engines.bt.ops.common import (
    CONDITIONS,
    M64,
    MASK,
    branch,
    ea,
    gp0,
    handles,
    iopl,
    ip_mask,
    read_E,
    seg_linear,
    set_reg,
    write_E,
)
from xvm.engines.bt.stack import pop, push
from xvm.engines.bt.state import CS, DS, ES, FS, GS, MODE_LONG, MODE_V86, RBP, RSP, SS

_SREG_BY_NAME = {"ES": ES, "CS": CS, "SS": SS, "DS": DS, "FS": FS, "GS": GS}
_STACK_MASK = {16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}


# --- near branches -------------------------------------------------------------------

for _cc, _name in enumerate(CC_NAMES):
    def _jcc(cpu, mmu, ins, io, _test=CONDITIONS[_cc]):
        if _test(cpu.rflags):
            branch(cpu, (cpu.rip + ins.imm) & (M64 if cpu.mode == MODE_LONG else MASK[ins.opsize]))
    handles(f"j{_name}_Jb", f"j{_name}_Jz")(_jcc)


@handles("jmp_Jb", "jmp_Jz")
def jmp_J(cpu, mmu, ins, io):
    branch(cpu, (cpu.rip + ins.imm) & ip_mask(cpu, ins.opsize))


@handles("jmp_Ev")
def jmp_Ev(cpu, mmu, ins, io):
    branch(cpu, read_E(cpu, mmu, ins, ins.opsize))


@handles("call_Jz")
def call_Jz(cpu, mmu, ins, io):
    size = ins.opsize
    target = (cpu.rip + ins.imm) & ip_mask(cpu, size)
    ret = cpu.rip
    branch(cpu, target)
    push(cpu, mmu, ret, size)


@handles("call_Ev")
def call_Ev(cpu, mmu, ins, io):
    size = ins.opsize
    target = read_E(cpu, mmu, ins, size)
    ret = cpu.rip
    branch(cpu, target)
    push(cpu, mmu, ret, size)


@handles("ret", "ret_Iw")
def ret(cpu, mmu, ins, io):
    size = ins.opsize
    target = pop(cpu, mmu, size)
    branch(cpu, target)
    if ins.imm:
        mask = _STACK_MASK[cpu.stack_bits]
        rsp = cpu.regs[RSP]
        cpu.regs[RSP] = (rsp & ~mask) | ((rsp + ins.imm) & mask)


@handles("loop_Jb", "loope_Jb", "loopne_Jb")
def loop_Jb(cpu, mmu, ins, io):
    """rCX by address size (SDM Vol. 2 LOOP); ZF tested for LOOPE/LOOPNE."""
    mask = ins.addr_mask
    count = (cpu.regs[1] - 1) & mask
    cpu.regs[1] = (cpu.regs[1] & ~mask) | count if mask != 0xFFFFFFFF else count
    m = ins.op.mnemonic
    taken = count != 0
    if m == "loope":
        taken = taken and bool(cpu.rflags & 0x40)
    elif m == "loopne":
        taken = taken and not cpu.rflags & 0x40
    if taken:
        branch(cpu, (cpu.rip + ins.imm) & ip_mask(cpu, ins.opsize))


@handles("jcxz_Jb")
def jcxz_Jb(cpu, mmu, ins, io):
    if not cpu.regs[1] & ins.addr_mask:
        branch(cpu, (cpu.rip + ins.imm) & ip_mask(cpu, ins.opsize))


# --- far transfers -------------------------------------------------------------------

def _far_pointer(cpu, mmu, ins) -> tuple[int, int]:
    """(selector, offset) of an m16:16/32/64 memory operand: offset first."""
    size = ins.opsize
    off = ea(cpu, ins)
    user = cpu.cpl == 3
    offset = mmu.read(seg_linear(cpu, ins.seg, off, size, False), size, user)
    selector = mmu.read(seg_linear(cpu, ins.seg, (off + size) & ins.addr_mask, 2, False), 2, user)
    return selector, offset


@handles("jmp_Ap")
def jmp_Ap(cpu, mmu, ins, io):
    segments.far_jump(cpu, mmu, ins.imm2, ins.imm, ins.opsize)


@handles("jmp_Mp")
def jmp_Mp(cpu, mmu, ins, io):
    selector, offset = _far_pointer(cpu, mmu, ins)
    segments.far_jump(cpu, mmu, selector, offset, ins.opsize)


@handles("call_Ap")
def call_Ap(cpu, mmu, ins, io):
    segments.far_call(cpu, mmu, ins.imm2, ins.imm, ins.opsize, cpu.rip)


@handles("call_Mp")
def call_Mp(cpu, mmu, ins, io):
    selector, offset = _far_pointer(cpu, mmu, ins)
    segments.far_call(cpu, mmu, selector, offset, ins.opsize, cpu.rip)


@handles("retf", "retf_Iw")
def retf(cpu, mmu, ins, io):
    segments.far_return(cpu, mmu, ins.opsize, ins.imm)


@handles("lds_Gz_Mp", "les_Gz_Mp", "lss_Gv_Mp", "lfs_Gv_Mp", "lgs_Gv_Mp")
def lxs(cpu, mmu, ins, io):
    selector, offset = _far_pointer(cpu, mmu, ins)
    sreg = _SREG_BY_NAME[ins.op.mnemonic[1:].upper()]
    segments.load_segment(cpu, mmu, sreg, selector)
    set_reg(cpu, ins.reg, ins.opsize, offset)  # LSS, unlike MOV SS / POP SS, opens no interrupt shadow


# --- interrupts ---------------------------------------------------------------------

@handles("int_Ib")
def int_Ib(cpu, mmu, ins, io):
    """INT n (deliver() applies the virtual-8086 IOPL check and the gate DPL check)."""
    interrupts.deliver(cpu, mmu, ins.imm, None, interrupts.KIND_SOFTWARE, cpu.rip)


@handles("int3")
def int3(cpu, mmu, ins, io):
    interrupts.deliver(cpu, mmu, BP, None, interrupts.KIND_SOFTWARE_EXCEPTION, cpu.rip)


@handles("into")
def into(cpu, mmu, ins, io):
    if cpu.rflags & 0x800:
        interrupts.deliver(cpu, mmu, OF, None, interrupts.KIND_SOFTWARE_EXCEPTION, cpu.rip)


@handles("int1")
def int1(cpu, mmu, ins, io):
    """ICEBP: a #DB trap without the DPL check of INT n."""
    interrupts.deliver(cpu, mmu, DB, None, interrupts.KIND_EXCEPTION, cpu.rip)


@handles("iret")
def iret(cpu, mmu, ins, io):
    """IRET in every mode (interrupt_return applies the virtual-8086 IOPL check).

    It ends NMI blocking even when it then faults (SDM Vol. 3 6.7.1).
    """
    cpu.nmi_blocked = False
    segments.interrupt_return(cpu, mmu, ins.opsize)


# --- stack ---------------------------------------------------------------------

@handles("push_Zv")
def push_Zv(cpu, mmu, ins, io):
    push(cpu, mmu, cpu.regs[ins.rm], ins.opsize)


@handles("pop_Zv")
def pop_Zv(cpu, mmu, ins, io):
    size = ins.opsize
    set_reg(cpu, ins.rm, size, pop(cpu, mmu, size))


@handles("push_Iz", "push_Ibs")
def push_I(cpu, mmu, ins, io):
    push(cpu, mmu, ins.imm & MASK[ins.opsize], ins.opsize)


@handles("push_Ev")
def push_Ev(cpu, mmu, ins, io):
    push(cpu, mmu, read_E(cpu, mmu, ins, ins.opsize), ins.opsize)


@handles("pop_Ev")
def pop_Ev(cpu, mmu, ins, io):
    """The address of a memory destination is computed after RSP is incremented (SDM Vol. 2 POP)."""
    value = pop(cpu, mmu, ins.opsize)
    write_E(cpu, mmu, ins, ins.opsize, value)


@handles("push_ES", "push_CS", "push_SS", "push_DS", "push_FS", "push_GS")
def push_sreg(cpu, mmu, ins, io):
    push(cpu, mmu, cpu.segs[_SREG_BY_NAME[ins.op.operands[0]]].selector, ins.opsize)


@handles("pop_ES", "pop_SS", "pop_DS", "pop_FS", "pop_GS")
def pop_sreg(cpu, mmu, ins, io):
    sreg = _SREG_BY_NAME[ins.op.operands[0]]
    selector = pop(cpu, mmu, ins.opsize) & 0xFFFF
    segments.load_segment(cpu, mmu, sreg, selector)
    if sreg == SS:
        cpu.interrupt_shadow = True


@handles("mov_Ev_Sw")
def mov_Ev_Sw(cpu, mmu, ins, io):
    """A memory destination is always 16 bits; a register one takes the operand size, zero-extended."""
    selector = cpu.segs[ins.reg & 7].selector
    write_E(cpu, mmu, ins, 2 if ins.is_mem else ins.opsize, selector)


@handles("mov_Sw_Ew")
def mov_Sw_Ew(cpu, mmu, ins, io):
    sreg = ins.reg & 7  # the decoder rejects CS and the undefined encodings 6 and 7
    segments.load_segment(cpu, mmu, sreg, read_E(cpu, mmu, ins, 2))
    if sreg == SS:
        cpu.interrupt_shadow = True


@handles("pusha")
def pusha(cpu, mmu, ins, io):
    size = ins.opsize
    regs = cpu.regs
    sp = regs[RSP]
    for r in (0, 1, 2, 3):
        push(cpu, mmu, regs[r], size)
    push(cpu, mmu, sp, size)
    for r in (5, 6, 7):
        push(cpu, mmu, regs[r], size)


@handles("popa")
def popa(cpu, mmu, ins, io):
    size = ins.opsize
    values = [pop(cpu, mmu, size) for _ in range(8)]  # DI SI BP (SP) BX DX CX AX
    for r, v in zip((7, 6, 5, 4, 3, 2, 1, 0), values):
        if r != RSP:
            set_reg(cpu, r, size, v)


@handles("enter_Iw_Ib")
def enter_Iw_Ib(cpu, mmu, ins, io):
    """ENTER with nesting level (SDM Vol. 2 ENTER); rBP/rSP move at the stack-address size."""
    size = ins.opsize
    level = ins.imm2 & 31
    mask = _STACK_MASK[cpu.stack_bits]
    regs = cpu.regs
    push(cpu, mmu, regs[RBP], size)
    frame = regs[RSP] & mask
    if level:
        bp = regs[RBP]
        for _ in range(level - 1):
            bp = (bp & ~mask) | ((bp - size) & mask)
            lin = seg_linear(cpu, SS, bp & mask, size, False)
            push(cpu, mmu, mmu.read(lin, size, cpu.cpl == 3), size)
        push(cpu, mmu, frame, size)
    rsp = regs[RSP]
    new_sp = (rsp - ins.imm) & mask
    regs[RBP] = (regs[RBP] & ~mask) | frame
    regs[RSP] = (rsp & ~mask) | new_sp


@handles("leave")
def leave(cpu, mmu, ins, io):
    """rSP = rBP at the stack-address size, then pop rBP (execute_one restores rSP if the pop faults)."""
    mask = _STACK_MASK[cpu.stack_bits]
    regs = cpu.regs
    regs[RSP] = (regs[RSP] & ~mask) | (regs[RBP] & mask)
    set_reg(cpu, RBP, ins.opsize, pop(cpu, mmu, ins.opsize))


@handles("pushf")
def pushf(cpu, mmu, ins, io):
    """VM and RF are pushed as 0 (SDM Vol. 2 PUSHF); IOPL-sensitive in virtual-8086 mode."""
    if cpu.mode == MODE_V86 and iopl(cpu) < 3:
        raise gp0()
    push(cpu, mmu, cpu.rflags & 0xFCFFFF, ins.opsize)


@handles("popf")
def popf(cpu, mmu, ins, io):
    """Which bits POPF may change depends on CPL and IOPL (SDM Vol. 2 POPF)."""
    size = ins.opsize
    mode = cpu.mode
    if mode == MODE_V86 and iopl(cpu) < 3:
        raise gp0()
    value = pop(cpu, mmu, size)
    changeable = 0x244DD5  # ID AC NT DF TF OF SF ZF AF PF CF and IF/IOPL handled below
    if cpu.cpl == 0 and mode != MODE_V86:
        changeable |= 0x3000 | 0x200
    elif cpu.cpl <= iopl(cpu):
        changeable |= 0x200
    if size == 2:
        changeable &= 0xFFFF
    old = cpu.rflags
    cpu.rflags = (old & ~changeable & ~0x10000) | (value & changeable) | 2
    if mode == MODE_LONG:
        cpu.rflags &= ~0x20000
