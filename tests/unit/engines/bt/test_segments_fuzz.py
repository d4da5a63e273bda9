"""Resource control for segmentation and interrupt delivery: random GDT/IDT/TSS contents.

Whatever the descriptor tables hold, a segment load, far transfer, return or
event delivery ends normally, in a GuestFault, or (delivery only) in a
TripleFault — never in another exception.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from xvm.arch.x86.regs import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, RFLAGS_VM
from xvm.engines.bt import interrupts, segments
from xvm.engines.bt.faults import GuestFault, TripleFault
from xvm.engines.bt.mmu import Mmu
from xvm.engines.bt.state import CS, RSP, SS, CpuState
from xvm.memory.guest_memory import GuestMemory

RAM = 0x20000


class NullIo:
    def read(self, paddr: int, size: int) -> int:
        return 0

    def write(self, paddr: int, size: int, value: int) -> None:
        pass


def plausible_descriptor(rng: random.Random) -> int:
    """Random access byte and flags over small bases/limits, with gate-like selectors mixed in."""
    if rng.random() < 0.15:
        return rng.getrandbits(64)
    low = rng.getrandbits(16) | rng.randrange(0, 0x80, 8) << 16 | rng.getrandbits(16) << 32
    return low | rng.getrandbits(8) << 40 | rng.getrandbits(8) << 48


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(("real", "prot", "v86", "long")),
       steps=st.integers(1, 25))
def test_random_descriptor_tables_only_raise_guest_faults(seed, mode, steps):
    rng = random.Random(seed)
    mem = GuestMemory.allocate(RAM)
    try:
        for addr in range(0, 0x4000, 8):
            mem.write_u64(addr, plausible_descriptor(rng))
        cpu = CpuState()
        if mode != "real":
            cpu.cr0 |= CR0_PE
        if mode == "v86":
            cpu.rflags |= RFLAGS_VM | rng.choice((0, 3 << 12))
        if mode == "long":
            cpu.cr0 |= CR0_PG
            cpu.cr4 = CR4_PAE
            cpu.efer = EFER_LME | EFER_LMA
            cpu.cr3 = 0x8000
            mem.write_u64(0x8000, 0x9000 | 7)
            mem.write_u64(0x9000, 0x87)          # first GiB identity-mapped
            cpu.segs[CS].flags = 0xA
        cpu.gdtr_base, cpu.gdtr_limit = 0x1000, rng.choice((0x7F, 0xFFF))
        cpu.idtr_base, cpu.idtr_limit = 0x2000, rng.choice((0x3FF, 0xFFF, 0x7))
        cpu.tr = segments.descriptor_cache(0x28, plausible_descriptor(rng))
        cpu.tr.base &= 0xFFFF
        cpu.cpl = rng.randrange(4) if mode in ("prot", "long") else 0
        cpu.refresh_mode()
        mmu = Mmu(mem, cpu, NullIo())
        mmu.mode_changed()
        for _ in range(steps):
            cpu.regs[RSP] = rng.choice((0x6000, 0x10, rng.getrandbits(32)))
            selector = rng.getrandbits(16) if rng.random() < 0.3 else rng.randrange(0, 0x100)
            opsize = rng.choice((2, 4, 8) if mode == "long" else (2, 4))
            op = rng.randrange(9)
            try:
                if op == 0:
                    segments.load_segment(cpu, mmu, rng.choice((0, 2, 3, 4, 5)), selector)
                elif op == 1:
                    segments.far_jump(cpu, mmu, selector, rng.getrandbits(32), opsize)
                elif op == 2:
                    segments.far_call(cpu, mmu, selector, rng.getrandbits(32), opsize, rng.getrandbits(32))
                elif op == 3:
                    segments.far_return(cpu, mmu, opsize, rng.choice((0, 8)))
                elif op == 4:
                    segments.interrupt_return(cpu, mmu, opsize)
                elif op == 5:
                    for probe in (segments.lar, segments.lsl, segments.verr, segments.verw):
                        probe(cpu, mmu, selector)
                elif op == 6:
                    segments.load_ldtr(cpu, mmu, selector)
                    segments.load_tr(cpu, mmu, selector)
                else:
                    fault = GuestFault(rng.randrange(32), rng.getrandbits(16), rng.getrandbits(32))
                    interrupts.deliver_fault(cpu, mmu, fault, rng.getrandbits(16))
            except (GuestFault, TripleFault):
                pass
            assert 0 <= cpu.cpl <= 3 and cpu.segs[SS] is not None
    finally:
        mem.close()
