"""Segmentation: descriptor loads, far transfers through gates, RETF/IRET (SDM Vol. 3 ch. 3, 5, 6, 7).

Each segment register is a `SegmentCache`: loading one reads the descriptor
from the GDT or LDT, checks it, sets its accessed bit in memory and copies
it into the cache. From then on the cache is the segment — later stores to
the descriptor table change nothing until the next load, exactly as the
hidden part of a hardware segment register (SDM Vol. 3 3.4.3). That copy is
the "shadow descriptor table" of the classic software VMMs.

Checks and fault codes follow the pseudo-code of MOV, JMP, CALL, RET and
IRET in SDM Vol. 2 and Bochs `cpu/segment_ctrl_pro.cc`, `call_far.cc`,
`ret_far.cc`, `iret.cc`. A selector error code is the selector with the RPL
bits cleared (SDM Vol. 3 6.13). Hardware task switches (JMP/CALL to a TSS
or task gate, interrupts through task gates, IRET with NT) are implemented
for 16- and 32-bit TSSs outside IA-32e mode (SDM Vol. 3 7.3), where they
exist; IA-32e mode has none (#GP).

Real mode loads only change the selector and base (limit and attributes
are kept: "unreal mode" works); virtual-8086 loads also set a 64 KiB
writable DPL-3 segment (SDM Vol. 3 20.1.1).

Descriptor-table reads are supervisor accesses whatever the CPL (SDM
Vol. 3 5.5): `user=False`. CPL and mode checks that belong to the
instruction (LLDT/LTR need CPL 0 in protected mode, #UD in real mode) are
the caller's.
"""

from __future__ import annotations

from typing import Optional

from xvm.arch.x86.regs import (
    CR0_PE,
    EFER_LMA,
    RFLAGS_AC,
    RFLAGS_ID,
    RFLAGS_IF,
    RFLAGS_IOPL,
    RFLAGS_NT,
    RFLAGS_RF,
    RFLAGS_VIF,
    RFLAGS_VIP,
    RFLAGS_VM,
)
from xvm.engines.bt.faults import (
    GuestFault,
    general_protection,
    invalid_opcode,
    invalid_tss,
    segment_not_present,
    stack_fault,
)
from xvm.engines.bt.mmu import Mmu
from xvm.engines.bt.stack import push_frame, read_frame
from xvm.engines.bt.state import CS, DS, ES, FS, GS, MODE_LONG, RSP, SS, CpuState, SegmentCache

# Descriptor access byte (bits 40..47): type, S, DPL, P (SDM Vol. 3 3.4.5).
ACC_ACCESSED = 0x01
ACC_RW = 0x02          # data: writable; code: readable
ACC_DC = 0x04          # data: expand-down; code: conforming
ACC_CODE = 0x08
ACC_S = 0x10           # code/data (1) or system (0)
ACC_P = 0x80
# System descriptor types (SDM Vol. 3 Table 3-2).
TSS16_AVAIL, LDT, TSS16_BUSY, CALL_GATE16, TASK_GATE, INT_GATE16, TRAP_GATE16 = 1, 2, 3, 4, 5, 6, 7
TSS_AVAIL, TSS_BUSY, CALL_GATE, INT_GATE, TRAP_GATE = 9, 0xB, 0xC, 0xE, 0xF
# Flags nibble (bits 52..55).
FLAG_L = 0x2
FLAG_DB = 0x4
FLAG_G = 0x8

_OFFSET_MASK = {2: 0xFFFF, 4: 0xFFFFFFFF, 8: (1 << 64) - 1}
_WIDTH = {16: 0xFFFF, 32: 0xFFFFFFFF, 64: (1 << 64) - 1}
#: RFLAGS bits that always read as 0 (3, 5, 15 and 22-63; SDM Vol. 1 3.4.3): an IRET frame cannot set them.
_RFLAGS_WRITABLE = 0x3F7FD7


# --- descriptors --------------------------------------------------------------
def read_descriptor(cpu: CpuState, mmu: Mmu, selector: int, wide: bool = False, ext: int = 0,
                    fault=general_protection) -> tuple:
    """(raw low 8 bytes, raw high 8 bytes or 0, linear address) of a descriptor.

    `wide` reads a 16-byte long-mode system descriptor. A selector beyond
    the table limit, or into an unusable LDT, raises `fault(selector)`.
    """
    index = selector & 0xFFF8
    if selector & 4:
        ldtr = cpu.ldtr
        if not ldtr.access & ACC_P or not ldtr.selector & 0xFFFC:
            raise fault((selector & 0xFFFC) | ext)
        base, limit = ldtr.base, ldtr.limit
    else:
        base, limit = cpu.gdtr_base, cpu.gdtr_limit
    if index + (15 if wide else 7) > limit:
        raise fault((selector & 0xFFFC) | ext)
    addr = base + index
    low = mmu.read(addr, 8, False)
    high = mmu.read(addr + 8, 8, False) if wide else 0
    return low, high, addr


def descriptor_cache(selector: int, low: int, high: int = 0) -> SegmentCache:
    """Decode a descriptor into the hidden-cache form (SDM Vol. 3 Figure 3-8)."""
    base = ((low >> 16) & 0xFFFFFF) | ((low >> 32) & 0xFF000000) | (high & 0xFFFFFFFF) << 32
    limit = (low & 0xFFFF) | ((low >> 32) & 0xF0000)
    flags = (low >> 52) & 0xF
    if flags & FLAG_G:
        limit = (limit << 12) | 0xFFF
    return SegmentCache(selector, base, limit, (low >> 40) & 0xFF, flags)


def _set_accessed(mmu: Mmu, addr: int, access: int) -> None:
    """Set the descriptor's accessed bit in memory, as the CPU does on a load."""
    if not access & ACC_ACCESSED:
        mmu.write(addr + 5, 1, access | ACC_ACCESSED, False)


def null_segment(selector: int, dpl: int = 0) -> SegmentCache:
    """A segment register holding a null selector: unusable (P=0), base and limit 0."""
    return SegmentCache(selector, 0, 0, dpl << 5, 0)


def _long(cpu: CpuState) -> bool:
    return bool(cpu.efer & EFER_LMA)


def _protected(cpu: CpuState) -> bool:
    return bool(cpu.cr0 & CR0_PE) and not cpu.rflags & RFLAGS_VM


# --- data segment loads ----------------------------------------------------------
def load_segment(cpu: CpuState, mmu: Mmu, sreg: int, selector: int) -> None:
    """MOV Sreg / POP Sreg / LDS..LSS: load ES, SS, DS, FS or GS (SDM Vol. 2 MOV)."""
    selector &= 0xFFFF
    if sreg == CS:
        raise invalid_opcode()
    if not _protected(cpu):
        seg = cpu.segs[sreg]
        if cpu.rflags & RFLAGS_VM:
            cpu.segs[sreg] = SegmentCache(selector, selector << 4, 0xFFFF, 0xF3, 0)
        else:
            cpu.segs[sreg] = SegmentCache(selector, selector << 4, seg.limit, seg.access, seg.flags)
        if sreg == SS:
            cpu.refresh_mode()
        return
    cpl = cpu.cpl
    rpl = selector & 3
    code = selector & 0xFFFC
    if sreg == SS:
        if not code:
            # 64-bit mode allows a null SS below ring 3 (SDM Vol. 2 MOV, "64-bit mode").
            if cpu.mode == MODE_LONG and cpl != 3 and rpl == cpl:
                cpu.segs[SS] = null_segment(selector, cpl)
                return
            raise general_protection(0)
        if rpl != cpl:
            raise general_protection(code)
        low, addr, access = _read_stack_descriptor(cpu, mmu, selector, cpl)
    else:
        if not code:
            cpu.segs[sreg] = null_segment(selector)
            return
        low, _, addr = read_descriptor(cpu, mmu, selector)
        access = (low >> 40) & 0xFF
        if not access & ACC_S or access & (ACC_CODE | ACC_RW) == ACC_CODE:
            raise general_protection(code)  # system segment or execute-only code
        conforming_code = access & (ACC_CODE | ACC_DC) == ACC_CODE | ACC_DC
        dpl = (access >> 5) & 3
        if not conforming_code and (rpl > dpl or cpl > dpl):
            raise general_protection(code)
        if not access & ACC_P:
            raise segment_not_present(code)
    _set_accessed(mmu, addr, access)
    cpu.segs[sreg] = descriptor_cache(selector, low | ACC_ACCESSED << 40)
    if sreg == SS:
        cpu.refresh_mode()


def _read_stack_descriptor(cpu: CpuState, mmu: Mmu, selector: int, dpl: int, fault=general_protection,
                           ext: int = 0) -> tuple:
    """(low, address, access) of a stack segment's descriptor: a present writable data segment of DPL `dpl`.

    Otherwise `fault` (#GP for MOV/POP SS and returns, #TS for an SS from the TSS), or #SS when not
    present (SDM Vol. 2 MOV, RET; Vol. 3 6.12.1.1).
    """
    code = (selector & 0xFFFC) | ext
    low, _, addr = read_descriptor(cpu, mmu, selector, ext=ext, fault=fault)
    access = (low >> 40) & 0xFF
    if access & (ACC_S | ACC_CODE | ACC_RW) != ACC_S | ACC_RW or (access >> 5) & 3 != dpl:
        raise fault(code)
    if not access & ACC_P:
        raise stack_fault(code)
    return low, addr, access


def load_ldtr(cpu: CpuState, mmu: Mmu, selector: int) -> None:
    """LLDT: a null selector leaves LDTR unusable (SDM Vol. 2 LLDT)."""
    selector &= 0xFFFF
    code = selector & 0xFFFC
    if not code:
        cpu.ldtr = null_segment(selector)
        cpu.ldtr.access = LDT
        return
    if selector & 4:
        raise general_protection(code)
    low, high, _ = read_descriptor(cpu, mmu, selector, wide=_long(cpu))
    access = (low >> 40) & 0xFF
    if access & (ACC_S | 0xF) != LDT:
        raise general_protection(code)
    if not access & ACC_P:
        raise segment_not_present(code)
    cpu.ldtr = descriptor_cache(selector, low, high)


def load_tr(cpu: CpuState, mmu: Mmu, selector: int) -> None:
    """LTR: load an available TSS and mark it busy in the GDT (SDM Vol. 2 LTR)."""
    selector &= 0xFFFF
    code = selector & 0xFFFC
    if not code:
        raise general_protection(0)
    if selector & 4:
        raise general_protection(code)
    long_mode = _long(cpu)
    low, high, addr = read_descriptor(cpu, mmu, selector, wide=long_mode)
    access = (low >> 40) & 0xFF
    kind = access & (ACC_S | 0xF)
    if kind != TSS_AVAIL and (long_mode or kind != TSS16_AVAIL):
        raise general_protection(code)
    if not access & ACC_P:
        raise segment_not_present(code)
    mmu.write(addr + 5, 1, access | 2, False)
    cpu.tr = descriptor_cache(selector, low | 2 << 40, high)


# --- LAR / LSL / VERR / VERW ---------------------------------------------------
def _probe(cpu: CpuState, mmu: Mmu, selector: int, system_types: frozenset) -> Optional[tuple]:
    """Descriptor visible to LAR/LSL at the current CPL and RPL, or None (ZF=0)."""
    if not selector & 0xFFFC:
        return None
    try:
        low, _, _ = read_descriptor(cpu, mmu, selector)
    except GuestFault as fault:
        if fault.vector != 13:
            raise
        return None
    access = (low >> 40) & 0xFF
    dpl = (access >> 5) & 3
    if access & ACC_S:
        if access & (ACC_CODE | ACC_DC) == ACC_CODE | ACC_DC:
            return low, access  # conforming code: no privilege check
    elif access & 0xF not in system_types:
        return None
    if dpl < cpu.cpl or dpl < selector & 3:
        return None
    return low, access


_LAR_TYPES = frozenset((1, 2, 3, 4, 5, 9, 0xB, 0xC))
_LAR_TYPES_LONG = frozenset((2, 9, 0xB, 0xC))
_LSL_TYPES = frozenset((1, 2, 3, 9, 0xB))
_LSL_TYPES_LONG = frozenset((2, 9, 0xB))


def lar(cpu: CpuState, mmu: Mmu, selector: int) -> Optional[int]:
    """LAR: access rights (descriptor bits 32..63 masked with 0x00F0FF00), or None when ZF=0."""
    found = _probe(cpu, mmu, selector, _LAR_TYPES_LONG if _long(cpu) else _LAR_TYPES)
    return None if found is None else (found[0] >> 32) & 0x00F0FF00


def lsl(cpu: CpuState, mmu: Mmu, selector: int) -> Optional[int]:
    """LSL: the byte-granular segment limit, or None when ZF=0."""
    found = _probe(cpu, mmu, selector, _LSL_TYPES_LONG if _long(cpu) else _LSL_TYPES)
    return None if found is None else descriptor_cache(selector, found[0]).limit


def verr(cpu: CpuState, mmu: Mmu, selector: int) -> bool:
    """VERR: readable code/data segment accessible at CPL and RPL."""
    found = _probe(cpu, mmu, selector, frozenset())
    return found is not None and found[1] & (ACC_CODE | ACC_RW) != ACC_CODE


def verw(cpu: CpuState, mmu: Mmu, selector: int) -> bool:
    """VERW: writable data segment accessible at CPL and RPL."""
    found = _probe(cpu, mmu, selector, frozenset())
    return found is not None and found[1] & (ACC_CODE | ACC_RW) == ACC_RW


# --- far transfers ----------------------------------------------------------------
def _load_real_cs(cpu: CpuState, selector: int, offset: int) -> None:
    cs = cpu.segs[CS]
    if cpu.rflags & RFLAGS_VM:
        cpu.segs[CS] = SegmentCache(selector, selector << 4, 0xFFFF, 0xF3, 0)
    else:
        cpu.segs[CS] = SegmentCache(selector, selector << 4, cs.limit, cs.access, cs.flags)
    cpu.rip = offset
    cpu.refresh_mode()


def _check_code_target(cpu: CpuState, low: int, selector: int, cpl: int, ext: int = 0,
                       same_level_only: bool = True) -> int:
    """Checks on a code-segment target of JMP/CALL (direct or through a gate); returns its DPL."""
    code = (selector & 0xFFFC) | ext
    access = (low >> 40) & 0xFF
    if access & (ACC_S | ACC_CODE) != ACC_S | ACC_CODE:
        raise general_protection(code)
    dpl = (access >> 5) & 3
    if access & ACC_DC:
        if dpl > cpl:
            raise general_protection(code)
    elif (dpl != cpl) if same_level_only else (dpl > cpl):
        raise general_protection(code)
    if _long(cpu) and (low >> 52) & (FLAG_L | FLAG_DB) == FLAG_L | FLAG_DB:
        raise general_protection(code)
    if not access & ACC_P:
        raise segment_not_present(code)
    return dpl


def _check_offset(cpu: CpuState, cache: SegmentCache, offset: int, code: int = 0) -> None:
    """#GP(code) when the new RIP is outside CS (limit, or canonical form in 64-bit code)."""
    if _long(cpu) and cache.flags & FLAG_L:
        top = offset >> 47
        if top and top != 0x1FFFF:
            raise general_protection(code)
    elif offset > cache.limit:
        raise general_protection(code)


def _commit_cs(cpu: CpuState, mmu: Mmu, low: int, addr: int, selector: int, cpl: int, offset: int) -> None:
    """Load CS with RPL = the new CPL, set the accessed bit, jump."""
    access = (low >> 40) & 0xFF
    _set_accessed(mmu, addr, access)
    cpu.segs[CS] = descriptor_cache((selector & 0xFFFC) | cpl, low | ACC_ACCESSED << 40)
    cpu.cpl = cpl
    cpu.rip = offset
    cpu.refresh_mode()


def _read_gate(cpu: CpuState, mmu: Mmu, selector: int, low: int) -> tuple:
    """Decode a call gate: (target selector, offset, gate size in bytes, parameter count).

    In IA-32e mode only the 16-byte 64-bit call gate exists; the type field
    of its upper half must be 0 (SDM Vol. 3 5.8.3.1).
    """
    gtype = (low >> 40) & 0xF
    code = selector & 0xFFFC
    if _long(cpu):
        if gtype != CALL_GATE:
            raise general_protection(code)
        _, high, _ = read_descriptor(cpu, mmu, selector, wide=True)
        if (high >> 40) & 0x1F:
            raise general_protection(code)
        offset = (low & 0xFFFF) | ((low >> 32) & 0xFFFF0000) | (high & 0xFFFFFFFF) << 32
        return (low >> 16) & 0xFFFF, offset, 8, 0
    if gtype not in (CALL_GATE16, CALL_GATE):
        raise general_protection(code)
    offset = low & 0xFFFF
    size = 2
    if gtype == CALL_GATE:
        offset |= (low >> 32) & 0xFFFF0000
        size = 4
    return (low >> 16) & 0xFFFF, offset, size, (low >> 32) & 0x1F


def _resolve_far(cpu: CpuState, mmu: Mmu, selector: int) -> tuple:
    """Common front of JMP/CALL far: (descriptor low, address, access) of a non-null selector."""
    selector &= 0xFFFF
    if not selector & 0xFFFC:
        raise general_protection(0)
    low, _, addr = read_descriptor(cpu, mmu, selector)
    return low, addr, (low >> 40) & 0xFF


def _gate_target(cpu: CpuState, mmu: Mmu, selector: int, low: int, addr: int, access: int) -> tuple:
    """Checks on a call gate and its target: (gate fields, target low, target addr)."""
    code = selector & 0xFFFC
    dpl = (access >> 5) & 3
    if dpl < cpu.cpl or dpl < selector & 3:
        raise general_protection(code)
    gate = _read_gate(cpu, mmu, selector, low)
    if not access & ACC_P:
        raise segment_not_present(code)
    target = gate[0]
    if not target & 0xFFFC:
        raise general_protection(0)
    tlow, _, taddr = read_descriptor(cpu, mmu, target)
    return gate, tlow, taddr


def _check_direct_target(cpu: CpuState, low: int, access: int, selector: int, cpl: int, offset: int) -> None:
    """JMP/CALL straight to a code segment: a nonconforming one also needs RPL <= CPL (SDM Vol. 2 JMP, CALL)."""
    _check_code_target(cpu, low, selector, cpl)
    if not access & ACC_DC and selector & 3 > cpl:
        raise general_protection(selector & 0xFFFC)
    _check_offset(cpu, descriptor_cache(selector, low), offset)


def far_jump(cpu: CpuState, mmu: Mmu, selector: int, offset: int, opsize: int) -> None:
    """JMP ptr16:xx / JMP m16:xx, directly or through a call gate (SDM Vol. 2 JMP)."""
    offset &= _OFFSET_MASK[opsize]
    if not _protected(cpu):
        _load_real_cs(cpu, selector & 0xFFFF, offset)
        return
    cpl = cpu.cpl
    low, addr, access = _resolve_far(cpu, mmu, selector)
    if access & ACC_S:
        _check_direct_target(cpu, low, access, selector, cpl, offset)
        _commit_cs(cpu, mmu, low, addr, selector, cpl, offset)
        return
    if _is_task(cpu, access):
        _far_task(cpu, mmu, selector, low, addr, access, TASK_JMP, cpu.rip)
        return
    gate, tlow, taddr = _gate_target(cpu, mmu, selector, low, addr, access)
    target, offset = gate[0], gate[1]
    _check_code_target(cpu, tlow, target, cpl)
    _check_offset(cpu, descriptor_cache(target, tlow), offset)
    _commit_cs(cpu, mmu, tlow, taddr, target, cpl, offset)


def tss_stack(cpu: CpuState, mmu: Mmu, dpl: int, ist: int = 0, ext: int = 0) -> tuple:
    """(SS selector, stack pointer) for privilege level `dpl` from the current TSS.

    32-bit TSS: ESPn at 4+8n, SSn at 8+8n; 16-bit TSS: SPn at 2+4n, SSn at
    4+4n; 64-bit TSS: RSPn at 4+8n and ISTn at 0x24+8(n-1), SS = null with
    RPL n (SDM Vol. 3 7.2.1, 7.7). Reads past the TSS limit raise #TS(TR).
    """
    tr = cpu.tr
    code = (tr.selector & 0xFFFC) | ext
    if _long(cpu):
        offset = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * dpl
        if offset + 7 > tr.limit:
            raise invalid_tss(code)
        return dpl, mmu.read(tr.base + offset, 8, False)
    if tr.access & 0xF in (TSS16_AVAIL, TSS16_BUSY):
        if 4 * dpl + 5 > tr.limit:
            raise invalid_tss(code)
        return mmu.read(tr.base + 4 + 4 * dpl, 2, False), mmu.read(tr.base + 2 + 4 * dpl, 2, False)
    if 8 * dpl + 11 > tr.limit:
        raise invalid_tss(code)
    return mmu.read(tr.base + 8 + 8 * dpl, 2, False), mmu.read(tr.base + 4 + 8 * dpl, 4, False)


def load_inner_ss(cpu: CpuState, mmu: Mmu, ss_sel: int, dpl: int, ext: int = 0) -> SegmentCache:
    """Check the stack segment taken from the TSS for a move to ring `dpl` (#TS / #SS with its selector)."""
    code = (ss_sel & 0xFFFC) | ext
    if _long(cpu):
        return null_segment(dpl, dpl)
    if not ss_sel & 0xFFFC:
        raise invalid_tss(ext)
    if ss_sel & 3 != dpl:
        raise invalid_tss(code)
    low, addr, access = _read_stack_descriptor(cpu, mmu, ss_sel, dpl, invalid_tss, ext)
    _set_accessed(mmu, addr, access)
    return descriptor_cache(ss_sel, low | ACC_ACCESSED << 40)


def _stack_bits(cpu: CpuState, ss: SegmentCache) -> int:
    if _long(cpu) and not ss.access & ACC_S:
        return 64  # null SS of a 64-bit privilege change
    return 32 if ss.flags & FLAG_DB else 16


def far_call(cpu: CpuState, mmu: Mmu, selector: int, offset: int, opsize: int, return_rip: int) -> None:
    """CALL ptr16:xx / CALL m16:xx, with call gates to inner rings and parameter copy (SDM Vol. 2 CALL)."""
    offset &= _OFFSET_MASK[opsize]
    cs_sel = cpu.segs[CS].selector
    if not _protected(cpu):
        rsp = push_frame(cpu, mmu, cpu.segs[SS], cpu.stack_bits, cpu.regs[RSP], (cs_sel, return_rip), opsize,
                         cpu.cpl == 3, 0)
        cpu.regs[RSP] = (cpu.regs[RSP] & ~_WIDTH[cpu.stack_bits]) | rsp
        _load_real_cs(cpu, selector & 0xFFFF, offset)
        return
    cpl = cpu.cpl
    low, addr, access = _resolve_far(cpu, mmu, selector)
    if access & ACC_S:
        _check_direct_target(cpu, low, access, selector, cpl, offset)
        _push_same_level(cpu, mmu, (cs_sel, return_rip), opsize)
        _commit_cs(cpu, mmu, low, addr, selector, cpl, offset)
        return
    if _is_task(cpu, access):
        _far_task(cpu, mmu, selector, low, addr, access, TASK_CALL, return_rip)
        return
    gate, tlow, taddr = _gate_target(cpu, mmu, selector, low, addr, access)
    target, offset, size, params = gate
    dpl = _check_code_target(cpu, tlow, target, cpl, same_level_only=False)
    tcache = descriptor_cache(target, tlow)
    if tlow >> 40 & ACC_DC or dpl == cpl:
        _check_offset(cpu, tcache, offset)
        _push_same_level(cpu, mmu, (cs_sel, return_rip), size)
        _commit_cs(cpu, mmu, tlow, taddr, target, cpl, offset)
        return
    # More privileged non-conforming target: switch to the TSS stack of ring `dpl`
    # and copy `params` parameters from the caller's stack (SDM Vol. 3 5.8.5).
    ss_sel, new_sp = tss_stack(cpu, mmu, dpl)
    new_ss = load_inner_ss(cpu, mmu, ss_sel, dpl)
    bits = _stack_bits(cpu, new_ss)
    copied = read_frame(cpu, mmu, 0, params, size) if params else []
    _check_offset(cpu, tcache, offset)
    old_ss, old_sp = cpu.segs[SS].selector, cpu.regs[RSP] & _WIDTH[cpu.stack_bits]
    frame = (old_ss, old_sp) + tuple(reversed(copied)) + (cs_sel, return_rip)
    sp = push_frame(cpu, mmu, new_ss, bits, new_sp & _WIDTH[bits], frame, size, dpl == 3,
                    new_ss.selector & 0xFFFC)
    cpu.segs[SS] = new_ss
    cpu.regs[RSP] = sp
    _commit_cs(cpu, mmu, tlow, taddr, target, dpl, offset)


def _push_same_level(cpu: CpuState, mmu: Mmu, values: tuple, size: int) -> None:
    mask = _WIDTH[cpu.stack_bits]
    rsp = push_frame(cpu, mmu, cpu.segs[SS], cpu.stack_bits, cpu.regs[RSP] & mask, values, size,
                     cpu.cpl == 3, 0)
    cpu.regs[RSP] = (cpu.regs[RSP] & ~mask) | rsp


# --- returns ---------------------------------------------------------------------
def _check_return_cs(cpu: CpuState, mmu: Mmu, selector: int) -> tuple:
    """RETF/IRET checks on the popped CS (SDM Vol. 2 RET, IRET): (low, addr, RPL)."""
    code = selector & 0xFFFC
    if not code:
        raise general_protection(0)
    low, _, addr = read_descriptor(cpu, mmu, selector)
    access = (low >> 40) & 0xFF
    rpl = selector & 3
    if access & (ACC_S | ACC_CODE) != ACC_S | ACC_CODE or rpl < cpu.cpl:
        raise general_protection(code)
    dpl = (access >> 5) & 3
    if (dpl > rpl) if access & ACC_DC else (dpl != rpl):
        raise general_protection(code)
    if _long(cpu) and (low >> 52) & (FLAG_L | FLAG_DB) == FLAG_L | FLAG_DB:
        raise general_protection(code)
    if not access & ACC_P:
        raise segment_not_present(code)
    return low, addr, rpl


def _check_return_ss(cpu: CpuState, mmu: Mmu, selector: int, rpl: int, to_64bit: bool) -> SegmentCache:
    """The SS popped by a return to an outer ring (or by IRET in 64-bit mode)."""
    code = selector & 0xFFFC
    if not code:
        if to_64bit and rpl != 3:
            return null_segment(selector, rpl)
        raise general_protection(0)
    if selector & 3 != rpl:
        raise general_protection(code)
    low, addr, access = _read_stack_descriptor(cpu, mmu, selector, rpl)
    _set_accessed(mmu, addr, access)
    return descriptor_cache(selector, low | ACC_ACCESSED << 40)


def _null_outer_data_segments(cpu: CpuState) -> None:
    """After a return to an outer ring, data segments more privileged than it become null (SDM RET)."""
    cpl = cpu.cpl
    for sreg in (ES, DS, FS, GS):
        seg = cpu.segs[sreg]
        conforming_code = seg.access & (ACC_CODE | ACC_DC) == ACC_CODE | ACC_DC
        if seg.access & ACC_S and not conforming_code and seg.dpl < cpl:
            cpu.segs[sreg] = null_segment(0)


def _return_to(cpu: CpuState, mmu: Mmu, low: int, addr: int, cs_sel: int, rpl: int, rip: int,
               ss_sel: Optional[int], sp: int, pop_bytes: int) -> None:
    """Commit a protected-mode RETF/IRET: new CS:RIP and, if `ss_sel` is given, a new SS:RSP."""
    cache = descriptor_cache(cs_sel, low)
    _check_offset(cpu, cache, rip)
    if ss_sel is None:
        _commit_cs(cpu, mmu, low, addr, cs_sel, rpl, rip)
        mask = _WIDTH[cpu.stack_bits]
        cpu.regs[RSP] = (cpu.regs[RSP] & ~mask) | (sp & mask)
        return
    to_64bit = _long(cpu) and bool(cache.flags & FLAG_L)
    ss = _check_return_ss(cpu, mmu, ss_sel, rpl, to_64bit)
    outer = rpl > cpu.cpl
    _commit_cs(cpu, mmu, low, addr, cs_sel, rpl, rip)
    cpu.segs[SS] = ss
    cpu.refresh_mode()
    mask = _WIDTH[cpu.stack_bits]
    cpu.regs[RSP] = (sp + pop_bytes) & mask
    if outer:
        _null_outer_data_segments(cpu)


def far_return(cpu: CpuState, mmu: Mmu, opsize: int, pop_bytes: int) -> None:
    """RETF [imm16], to the same or an outer privilege level (SDM Vol. 2 RET)."""
    ip, cs_sel = read_frame(cpu, mmu, 0, 2, opsize)
    cs_sel &= 0xFFFF
    mask = _WIDTH[cpu.stack_bits]
    after = cpu.regs[RSP] + 2 * opsize + pop_bytes
    if not _protected(cpu):
        cpu.regs[RSP] = (cpu.regs[RSP] & ~mask) | (after & mask)
        _load_real_cs(cpu, cs_sel, ip)
        return
    low, addr, rpl = _check_return_cs(cpu, mmu, cs_sel)
    if rpl == cpu.cpl:
        _return_to(cpu, mmu, low, addr, cs_sel, rpl, ip, None, after, 0)
        return
    sp, ss_sel = read_frame(cpu, mmu, 2 * opsize + pop_bytes, 2, opsize)
    _return_to(cpu, mmu, low, addr, cs_sel, rpl, ip, ss_sel & 0xFFFF, sp, pop_bytes)


def _iret_flags(cpu: CpuState, flags: int, opsize: int, cpl: int) -> int:
    """Which RFLAGS bits IRET may change at this CPL/IOPL (SDM Vol. 2 IRET)."""
    changeable = 0x7FD5 & ~RFLAGS_IOPL & ~RFLAGS_IF   # CF PF AF ZF SF TF DF OF NT
    if opsize > 2:
        changeable |= RFLAGS_RF | RFLAGS_AC | RFLAGS_ID
        if cpl == 0:
            changeable |= RFLAGS_VIF | RFLAGS_VIP
    if cpl == 0:
        changeable |= RFLAGS_IOPL
    if cpl <= (cpu.rflags & RFLAGS_IOPL) >> 12:
        changeable |= RFLAGS_IF
    return (cpu.rflags & ~changeable) | (flags & changeable) | 2


def interrupt_return(cpu: CpuState, mmu: Mmu, opsize: int) -> None:
    """IRET/IRETD/IRETQ in every mode, including returns to outer rings and to virtual-8086 mode."""
    rflags = cpu.rflags
    mask = _WIDTH[cpu.stack_bits]
    if not cpu.cr0 & CR0_PE:
        ip, cs_sel, flags = read_frame(cpu, mmu, 0, 3, opsize)
        keep = RFLAGS_VM | RFLAGS_VIF | RFLAGS_VIP if opsize > 2 else ~0xFFFF
        cpu.rflags = ((rflags & keep) | (flags & ~keep) | 2) & _RFLAGS_WRITABLE
        cpu.regs[RSP] = (cpu.regs[RSP] & ~mask) | ((cpu.regs[RSP] + 3 * opsize) & mask)
        _load_real_cs(cpu, cs_sel & 0xFFFF, ip)
        return
    if rflags & RFLAGS_VM:
        # Virtual-8086 mode without VME: IOPL-sensitive (SDM Vol. 3 20.2.7).
        if (rflags & RFLAGS_IOPL) != RFLAGS_IOPL:
            raise general_protection(0)
        ip, cs_sel, flags = read_frame(cpu, mmu, 0, 3, opsize)
        keep = RFLAGS_VM | RFLAGS_IOPL | RFLAGS_VIF | RFLAGS_VIP
        if opsize == 2:
            keep |= ~0xFFFF
        cpu.rflags = ((rflags & keep) | (flags & ~keep) | 2) & _RFLAGS_WRITABLE
        cpu.regs[RSP] = (cpu.regs[RSP] & ~mask) | ((cpu.regs[RSP] + 3 * opsize) & mask)
        _load_real_cs(cpu, cs_sel & 0xFFFF, ip & 0xFFFF)
        return
    if rflags & RFLAGS_NT:
        if _long(cpu):
            raise general_protection(0)  # no task switches in IA-32e mode
        _task_return(cpu, mmu)
        return
    ip, cs_sel, flags = read_frame(cpu, mmu, 0, 3, opsize)
    cs_sel &= 0xFFFF
    cpl = cpu.cpl
    if flags & RFLAGS_VM and cpl == 0 and opsize == 4 and not _long(cpu):
        _iret_to_v86(cpu, mmu, ip, cs_sel, flags)
        return
    low, addr, rpl = _check_return_cs(cpu, mmu, cs_sel)
    new_flags = _iret_flags(cpu, flags, opsize, cpl)
    if rpl == cpl and cpu.mode != MODE_LONG:
        _return_to(cpu, mmu, low, addr, cs_sel, rpl, ip, None, cpu.regs[RSP] + 3 * opsize, 0)
    else:
        sp, ss_sel = read_frame(cpu, mmu, 3 * opsize, 2, opsize)
        _return_to(cpu, mmu, low, addr, cs_sel, rpl, ip, ss_sel & 0xFFFF, sp, 0)
    cpu.rflags = new_flags
    cpu.refresh_mode()


def _iret_to_v86(cpu: CpuState, mmu: Mmu, ip: int, cs_sel: int, flags: int) -> None:
    """IRETD from ring 0 with VM=1 in the image: pop ESP, SS, ES, DS, FS, GS too (SDM Vol. 2 IRET)."""
    sp, ss_sel, es, ds, fs, gs = read_frame(cpu, mmu, 12, 6, 4)
    cpu.rflags = (flags & 0x3F7FD7) | 2 | RFLAGS_VM
    for sreg, sel in ((ES, es), (DS, ds), (FS, fs), (GS, gs), (SS, ss_sel)):
        sel &= 0xFFFF
        cpu.segs[sreg] = SegmentCache(sel, sel << 4, 0xFFFF, 0xF3, 0)
    cpu.regs[RSP] = sp & 0xFFFFFFFF
    _load_real_cs(cpu, cs_sel, ip & 0xFFFF)


# --- hardware task switches (SDM Vol. 3 7.3) -------------------------------------
#: What started a task switch: it decides busy bits, NT and the back link (SDM Vol. 3 Table 7-2).
TASK_JMP, TASK_CALL, TASK_IRET, TASK_INT = range(4)

#: 32-bit TSS fields (SDM Vol. 3 Figure 7-2).
TSS32_CR3, TSS32_EIP, TSS32_EFLAGS, TSS32_GPRS, TSS32_SREGS, TSS32_LDT = 0x1C, 0x20, 0x24, 0x28, 0x48, 0x60
#: 16-bit TSS fields (SDM Vol. 3 Figure 7-11).
TSS16_IP, TSS16_FLAGS, TSS16_GPRS, TSS16_SREGS, TSS16_LDT = 0x0E, 0x10, 0x12, 0x22, 0x2A


def _is_task(cpu: CpuState, access: int) -> bool:
    """A TSS descriptor or task gate as a JMP/CALL target (they do not exist in IA-32e mode)."""
    return not _long(cpu) and access & 0x1F in (TSS16_AVAIL, TSS16_BUSY, TSS_AVAIL, TSS_BUSY, TASK_GATE)


def _far_task(cpu: CpuState, mmu: Mmu, selector: int, low: int, addr: int, access: int, reason: int,
              return_rip: int) -> None:
    """JMP/CALL to a TSS descriptor or through a task gate."""
    code = selector & 0xFFFC
    dpl = (access >> 5) & 3
    if dpl < cpu.cpl or dpl < selector & 3:
        raise general_protection(code)
    if access & 0x1F == TASK_GATE:
        if not access & ACC_P:
            raise segment_not_present(code)
        selector = (low >> 16) & 0xFFFF
        low, addr = task_gate_tss(cpu, mmu, selector, 0)
    task_switch(cpu, mmu, selector, low, addr, reason, return_rip)


def task_gate_tss(cpu: CpuState, mmu: Mmu, selector: int, ext: int) -> tuple:
    """The TSS a task gate names: a GDT selector of an available TSS, else #GP(selector)."""
    code = (selector & 0xFFFC) | ext
    if selector & 4 or not selector & 0xFFFC:
        raise general_protection(code)
    low, _, addr = read_descriptor(cpu, mmu, selector, ext=ext)
    if (low >> 40) & 0x17 != TSS16_AVAIL:  # types 1 and 9: available TSS
        raise general_protection(code)
    return low, addr


def _task_return(cpu: CpuState, mmu: Mmu) -> None:
    """IRET with NT=1: switch back to the task in the previous-task link (SDM Vol. 2 IRET)."""
    link = mmu.read(cpu.tr.base, 2, False)
    code = link & 0xFFFC
    if link & 4:
        raise invalid_tss(code)
    low, _, addr = read_descriptor(cpu, mmu, link, fault=invalid_tss)
    if (low >> 40) & 0x17 != TSS16_BUSY:  # types 3 and 0xB: busy TSS
        raise invalid_tss(code)
    task_switch(cpu, mmu, link, low, addr, TASK_IRET, cpu.rip)


def task_switch(cpu: CpuState, mmu: Mmu, selector: int, low: int, addr: int, reason: int, return_rip: int,
                error_code: Optional[int] = None, ext: int = 0) -> None:
    """Save the current task in its TSS and load the task of TSS descriptor `low` (SDM Vol. 3 7.3).

    Faults up to the TR load leave the old task untouched; faults while
    loading the new task's segments are raised in the new task, as on
    hardware. `error_code` (interrupts through task gates) is pushed on the
    new task's stack.
    """
    code = (selector & 0xFFFC) | ext
    access = (low >> 40) & 0xFF
    if not access & ACC_P:
        raise segment_not_present(code)
    new = descriptor_cache(selector, low)
    is32 = bool(access & 8)
    if new.limit < (0x67 if is32 else 0x2B):
        raise invalid_tss(code)
    busy = bool(access & 2)
    if reason == TASK_IRET and not busy:
        raise invalid_tss(code)
    if reason != TASK_IRET and busy:
        raise general_protection(code)
    # Read the whole new TSS before changing anything, so a #PF here is clean.
    image = mmu.read_bytes(new.base, 0x68 if is32 else 0x2C, False)
    old = cpu.tr
    flags = cpu.rflags & ~RFLAGS_NT if reason == TASK_IRET else cpu.rflags
    _save_task(cpu, mmu, old, flags, return_rip)
    gdt_old = cpu.gdtr_base + (old.selector & 0xFFF8) + 5
    if reason in (TASK_JMP, TASK_IRET):
        mmu.write(gdt_old, 1, mmu.read(gdt_old, 1, False) & ~2, False)
    if reason in (TASK_CALL, TASK_INT):
        mmu.write(new.base, 2, old.selector, False)
        image = old.selector.to_bytes(2, "little") + image[2:]
    if reason != TASK_IRET:
        mmu.write(addr + 5, 1, access | 2, False)
    new.access = access | 2
    cpu.tr = new
    cpu.cr0 |= 1 << 3  # CR0.TS: the FPU state belongs to the previous task
    _load_task(cpu, mmu, image, is32, reason in (TASK_CALL, TASK_INT))
    if error_code is not None:
        size = 4 if is32 else 2
        sp = push_frame(cpu, mmu, cpu.segs[SS], cpu.stack_bits, cpu.regs[RSP] & _WIDTH[cpu.stack_bits],
                        (error_code,), size, cpu.cpl == 3, ext)
        cpu.regs[RSP] = (cpu.regs[RSP] & ~_WIDTH[cpu.stack_bits]) | sp
    if cpu.rip > cpu.segs[CS].limit:
        raise general_protection(ext)


def _save_task(cpu: CpuState, mmu: Mmu, old: SegmentCache, flags: int, rip: int) -> None:
    """Store the dynamic fields of the outgoing task in its TSS (SDM Vol. 3 7.2.1)."""
    base = old.base
    selectors = [cpu.segs[s].selector for s in (ES, CS, SS, DS, FS, GS)]
    if old.access & 8:
        fields = [rip, flags] + [cpu.regs[i] for i in range(8)] + selectors
        mmu.write_bytes(base + TSS32_EIP, b"".join((v & 0xFFFFFFFF).to_bytes(4, "little") for v in fields),
                        False)
    else:
        fields = [rip, flags] + [cpu.regs[i] for i in range(8)] + selectors[:4]
        mmu.write_bytes(base + TSS16_IP, b"".join((v & 0xFFFF).to_bytes(2, "little") for v in fields), False)


def _load_task(cpu: CpuState, mmu: Mmu, image: bytes, is32: bool, nested: bool) -> None:
    """Load the incoming task's registers, then its LDT and segments; faults there are #TS (SDM Vol. 3 Table 7-1)."""
    if is32:
        words = [int.from_bytes(image[i:i + 4], "little") for i in range(0, 0x68, 4)]
        cr3 = words[TSS32_CR3 // 4]
        cpu.rip = words[TSS32_EIP // 4]
        flags = words[TSS32_EFLAGS // 4]
        for i in range(8):
            cpu.regs[i] = words[TSS32_GPRS // 4 + i]
        sels = [words[TSS32_SREGS // 4 + i] & 0xFFFF for i in range(6)]
        ldt = words[TSS32_LDT // 4] & 0xFFFF
        if cpu.cr0 & (1 << 31) and cr3 != cpu.cr3:
            cpu.cr3 = cr3
            mmu.mode_changed()
    else:
        words = [int.from_bytes(image[i:i + 2], "little") for i in range(0, 0x2C, 2)]
        cpu.rip = words[TSS16_IP // 2]
        flags = (cpu.rflags & ~0xFFFF) | words[TSS16_FLAGS // 2]
        for i in range(8):
            cpu.regs[i] = (cpu.regs[i] & ~0xFFFF) | words[TSS16_GPRS // 2 + i]
        sels = [words[TSS16_SREGS // 2 + i] for i in range(4)] + [0, 0]
        ldt = words[TSS16_LDT // 2]
    cpu.rflags = (flags | 2 | (RFLAGS_NT if nested else 0)) & 0x3F7FD7
    # The selectors are loaded first, unusable, so a fault below leaves them
    # visible to the new task's handler (SDM Vol. 3 7.3 step 13).
    for sreg, sel in enumerate(sels):
        cpu.segs[sreg] = null_segment(sel)
    cpu.ldtr = null_segment(ldt)
    cpu.ldtr.access = LDT
    if cpu.rflags & RFLAGS_VM:
        for sreg, sel in enumerate(sels):
            cpu.segs[sreg] = SegmentCache(sel, sel << 4, 0xFFFF, 0xF3, 0)
        cpu.refresh_mode()
        return
    cpu.cpl = sels[CS] & 3
    try:
        load_ldtr(cpu, mmu, ldt)
        low, addr, _ = _check_task_cs(cpu, mmu, sels[CS])
        _set_accessed(mmu, addr, (low >> 40) & 0xFF)
        cpu.segs[CS] = descriptor_cache(sels[CS], low | ACC_ACCESSED << 40)
        cpu.refresh_mode()
        for sreg in (SS, DS, ES, FS, GS):
            load_segment(cpu, mmu, sreg, sels[sreg])
    except GuestFault as fault:
        cpu.refresh_mode()
        if fault.vector == 13:
            raise invalid_tss(fault.error_code or 0) from fault
        raise


def _check_task_cs(cpu: CpuState, mmu: Mmu, selector: int) -> tuple:
    """CS of the incoming task: a present code segment whose DPL fits its RPL."""
    if not selector & 0xFFFC:
        raise general_protection(0)
    low, _, addr = read_descriptor(cpu, mmu, selector)
    access = (low >> 40) & 0xFF
    dpl = (access >> 5) & 3
    rpl = selector & 3
    if access & (ACC_S | ACC_CODE) != ACC_S | ACC_CODE or ((dpl > rpl) if access & ACC_DC else (dpl != rpl)):
        raise general_protection(selector & 0xFFFC)
    if not access & ACC_P:
        raise segment_not_present(selector & 0xFFFC)
    return low, addr, rpl
