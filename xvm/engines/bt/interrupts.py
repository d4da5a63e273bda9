"""Exception and interrupt delivery through the IVT and IDT (SDM Vol. 3 ch. 6).

The run loop catches a GuestFault, puts RIP back on the faulting
instruction (or after it, for traps) and calls

    deliver_fault(cpu, mmu, fault, return_rip)

which applies the double-fault rules of SDM Vol. 3 Table 6-5 and raises
TripleFault when even #DF cannot be delivered. External interrupts, NMI and
INT n/INT3/INTO go through `deliver` with their kind. Delivery is
all-or-nothing for the registers: the frame is written to the (new) stack
first and CS, RIP, SS, RSP, RFLAGS change only once every check passed, so a
fault during delivery leaves the state of the interrupted instruction for
the next attempt (as hardware does, Bochs `cpu/exception.cc`).

Task gates switch tasks (segments.task_switch). Not implemented: the
VME/PVI extensions.
"""

from __future__ import annotations

from typing import Optional

from xvm.arch.x86.regs import (
    CR0_PE,
    EFER_LMA,
    RFLAGS_AC,
    RFLAGS_IF,
    RFLAGS_IOPL,
    RFLAGS_NT,
    RFLAGS_RF,
    RFLAGS_TF,
    RFLAGS_VM,
)
from xvm.engines.bt.faults import (
    CONTRIBUTORY,
    DF,
    PF,
    VECTORS_WITH_ERROR_CODE,
    GuestFault,
    TripleFault,
    general_protection,
    segment_not_present,
)
from xvm.engines.bt.mmu import Mmu
from xvm.engines.bt.segments import (
    ACC_CODE,
    ACC_DC,
    ACC_P,
    ACC_S,
    FLAG_DB,
    FLAG_L,
    INT_GATE,
    INT_GATE16,
    TASK_GATE,
    TASK_INT,
    TRAP_GATE,
    TRAP_GATE16,
    descriptor_cache,
    load_inner_ss,
    null_segment,
    read_descriptor,
    task_gate_tss,
    task_switch,
    tss_stack,
)
from xvm.engines.bt.stack import push_frame
from xvm.engines.bt.state import CS, DS, ES, FS, GS, RSP, SS, CpuState, SegmentCache

#: How an event arose: it decides the EXT bit, the gate DPL check and the v86 IOPL check.
#: KIND_SOFTWARE is INT n; KIND_SOFTWARE_EXCEPTION is INT3 and INTO (DPL-checked, not IOPL-sensitive).
KIND_EXCEPTION, KIND_SOFTWARE, KIND_EXTERNAL, KIND_NMI, KIND_SOFTWARE_EXCEPTION = range(5)

#: Faults (as opposed to traps and aborts): the RFLAGS image they push has RF=1 (SDM Vol. 3 17.3.1.1).
_FAULT_VECTORS = frozenset((0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20))
_WIDTH = {16: 0xFFFF, 32: 0xFFFFFFFF, 64: (1 << 64) - 1}
_LEGACY_GATES = (TASK_GATE, INT_GATE16, TRAP_GATE16, INT_GATE, TRAP_GATE)


def deliver(cpu: CpuState, mmu: Mmu, vector: int, error_code: Optional[int], kind: int, return_rip: int) -> None:
    """Deliver one event; `error_code` is pushed when not None (never in real mode)."""
    software = kind in (KIND_SOFTWARE, KIND_SOFTWARE_EXCEPTION)
    ext = 0 if software else 1
    flags = cpu.rflags
    if kind == KIND_EXCEPTION and vector in _FAULT_VECTORS:
        flags |= RFLAGS_RF
    if not cpu.cr0 & CR0_PE:
        _deliver_real(cpu, mmu, vector, return_rip)
        return
    if kind == KIND_SOFTWARE and flags & RFLAGS_VM and flags & RFLAGS_IOPL != RFLAGS_IOPL:
        raise general_protection(0)  # INT n in virtual-8086 mode, IOPL < 3, no VME (SDM Vol. 3 20.3.3)
    idt_code = (vector << 3) | 2 | ext
    long_mode = bool(cpu.efer & EFER_LMA)
    size = 16 if long_mode else 8
    if vector * size + size - 1 > cpu.idtr_limit:
        raise general_protection(idt_code)
    low = mmu.read(cpu.idtr_base + vector * size, 8, False)
    high = mmu.read(cpu.idtr_base + vector * size + 8, 8, False) if long_mode else 0
    access = (low >> 40) & 0xFF
    gtype = access & 0x1F
    if gtype not in ((INT_GATE, TRAP_GATE) if long_mode else _LEGACY_GATES):
        raise general_protection(idt_code)
    if software and (access >> 5) & 3 < cpu.cpl:
        raise general_protection(idt_code)
    if not access & ACC_P:
        raise segment_not_present(idt_code)
    if gtype == TASK_GATE:
        selector = (low >> 16) & 0xFFFF
        tss_low, tss_addr = task_gate_tss(cpu, mmu, selector, ext)
        task_switch(cpu, mmu, selector, tss_low, tss_addr, TASK_INT, return_rip, error_code, ext)
        return
    offset = (low & 0xFFFF) | ((low >> 32) & 0xFFFF0000 if gtype & 8 else 0) | (high & 0xFFFFFFFF) << 32
    target = (low >> 16) & 0xFFFF
    ist = (low >> 32) & 7 if long_mode else 0
    _deliver_protected(cpu, mmu, target, offset, 8 if long_mode else (4 if gtype & 8 else 2),
                       ist, gtype in (INT_GATE, INT_GATE16), flags, error_code, ext, return_rip)


def _deliver_real(cpu: CpuState, mmu: Mmu, vector: int, return_rip: int) -> None:
    """Real mode: FLAGS, CS, IP onto the stack, CS:IP from the IVT; IF, TF, AC cleared (SDM Vol. 3 20.1.4)."""
    if vector * 4 + 3 > cpu.idtr_limit:
        raise general_protection(0)
    entry = mmu.read(cpu.idtr_base + vector * 4, 4, False)
    mask = _WIDTH[cpu.stack_bits]
    frame = (cpu.rflags, cpu.segs[CS].selector, return_rip)
    sp = push_frame(cpu, mmu, cpu.segs[SS], cpu.stack_bits, cpu.regs[RSP] & mask, frame, 2, False, 0)
    cpu.regs[RSP] = (cpu.regs[RSP] & ~mask) | sp
    cpu.rflags &= ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC)
    selector = entry >> 16
    cs = cpu.segs[CS]
    cpu.segs[CS] = SegmentCache(selector, selector << 4, cs.limit, cs.access, cs.flags)
    cpu.rip = entry & 0xFFFF
    cpu.refresh_mode()


def _deliver_protected(cpu: CpuState, mmu: Mmu, target: int, offset: int, size: int, ist: int,
                       interrupt_gate: bool, flags: int, error_code: Optional[int], ext: int,
                       return_rip: int) -> None:
    """Through a 16/32-bit gate or a 64-bit gate, to the same or a more privileged ring (SDM Vol. 3 6.12.1)."""
    if not target & 0xFFFC:
        raise general_protection(ext)
    long_mode = size == 8
    code = (target & 0xFFFC) | ext
    low, _, addr = read_descriptor(cpu, mmu, target, ext=ext)
    access = (low >> 40) & 0xFF
    dpl = (access >> 5) & 3
    if access & (ACC_S | ACC_CODE) != ACC_S | ACC_CODE or dpl > cpu.cpl:
        raise general_protection(code)
    if long_mode and (low >> 52) & (FLAG_L | FLAG_DB) != FLAG_L:
        raise general_protection(code)
    if not access & ACC_P:
        raise segment_not_present(code)
    cs_cache = descriptor_cache((target & 0xFFFC), low | 1 << 40)
    from_v86 = bool(flags & RFLAGS_VM)
    old_ss, old_cs = cpu.segs[SS], cpu.segs[CS]
    old_sp = cpu.regs[RSP]
    inner = not access & ACC_DC and dpl < cpu.cpl
    if from_v86 and (not inner or dpl != 0):
        raise general_protection(code)
    if inner or (long_mode and ist):
        new_dpl = dpl if inner else cpu.cpl
        ss_sel, sp = tss_stack(cpu, mmu, new_dpl, ist, ext)
        ss = load_inner_ss(cpu, mmu, ss_sel, new_dpl, ext) if inner else old_ss
        frame: tuple = (old_ss.selector, old_sp)
        if from_v86:
            frame = tuple(cpu.segs[s].selector for s in (GS, FS, DS, ES)) + frame
    else:
        new_dpl = cpu.cpl
        ss, sp = old_ss, old_sp
        frame = (old_ss.selector, old_sp) if long_mode else ()
    if long_mode:
        bits = 64
        sp &= ~0xF  # 64-bit frames start 16-byte aligned (SDM Vol. 3 6.14.2)
    else:
        bits = 32 if ss.flags & FLAG_DB else 16
        sp &= _WIDTH[bits]
    frame += (flags, old_cs.selector, return_rip)
    if error_code is not None:
        frame += (error_code,)
    if long_mode:
        top = offset >> 47
        if top and top != 0x1FFFF:
            raise general_protection(ext)
    elif offset > cs_cache.limit:
        raise general_protection(ext)
    fault_code = (ss.selector & 0xFFFC) | ext if ss is not old_ss else ext
    sp = push_frame(cpu, mmu, ss, bits, sp, frame, size, new_dpl == 3, fault_code)
    # Commit: nothing below can fault except the accessed-bit store, done first.
    if not access & 1:
        mmu.write(addr + 5, 1, access | 1, False)
    cs_cache.selector = (target & 0xFFFC) | new_dpl
    cpu.segs[CS] = cs_cache
    if ss is not old_ss:
        cpu.segs[SS] = ss
        cpu.regs[RSP] = sp
    else:
        mask = _WIDTH[bits]
        cpu.regs[RSP] = (old_sp & ~mask) | sp
    if from_v86:
        for sreg in (GS, FS, DS, ES):
            cpu.segs[sreg] = null_segment(0)
    cpu.cpl = new_dpl
    cpu.rip = offset
    cpu.rflags &= ~(RFLAGS_TF | RFLAGS_VM | RFLAGS_RF | RFLAGS_NT | (RFLAGS_IF if interrupt_gate else 0))
    cpu.refresh_mode()


def _is_double(first: int, second: int) -> bool:
    """SDM Vol. 3 Table 6-5: which pairs of exceptions become #DF."""
    if first in CONTRIBUTORY:
        return second in CONTRIBUTORY
    if first == PF:
        return second in CONTRIBUTORY or second == PF
    return False


def deliver_fault(cpu: CpuState, mmu: Mmu, fault: GuestFault, return_rip: int) -> None:
    """Deliver an exception raised by the guest, escalating to #DF and triple fault (SDM Vol. 3 6.15).

    Sets CR2 for #PF. A fault while delivering is handled serially unless
    the pair is in Table 6-5; a fault while delivering #DF shuts down.
    """
    vector = fault.vector
    if vector == PF and fault.cr2 is not None:
        cpu.cr2 = fault.cr2
    code = (fault.error_code or 0) if vector in VECTORS_WITH_ERROR_CODE else None
    try:
        deliver(cpu, mmu, vector, code, KIND_EXCEPTION, return_rip)
    except GuestFault as second:
        if vector == DF:
            raise TripleFault(f"fault {second!r} while delivering #DF") from second
        if _is_double(vector, second.vector):
            if second.vector == PF and second.cr2 is not None:
                cpu.cr2 = second.cr2
            deliver_fault(cpu, mmu, GuestFault(DF, 0), return_rip)
        else:
            deliver_fault(cpu, mmu, second, return_rip)
