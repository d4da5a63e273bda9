"""Resource control for the soft MMU: random page tables and accesses never escape guest RAM.

Every outcome of an access is a value or a GuestFault; RAM accesses go to RAM
and everything else to the PhysicalIo, never anywhere else.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from xvm.arch.x86.regs import CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, CR4_SMEP, EFER_LMA, EFER_NXE
from xvm.engines.bt.faults import GuestFault
from xvm.engines.bt.mmu import ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, Mmu
from xvm.engines.bt.state import CpuState
from xvm.memory.guest_memory import GuestMemory

PAGES = 16
RAM = PAGES * 4096
MODES = [
    (0, 0, 0),
    (CR0_PG, 0, 0),
    (CR0_PG | CR0_WP, CR4_PSE | CR4_PGE, 0),
    (CR0_PG, CR4_PAE | CR4_SMEP, EFER_NXE),
    (CR0_PG | CR0_WP, CR4_PAE | CR4_PGE, EFER_LMA | EFER_NXE),
    (CR0_PG, CR4_PAE, EFER_LMA),
]


class CheckingIo:
    """MMIO must only ever see addresses outside RAM."""

    def read(self, paddr: int, size: int) -> int:
        assert not 0 <= paddr < RAM and 1 <= size <= 16
        return 0xFF

    def write(self, paddr: int, size: int, value: int) -> None:
        assert not 0 <= paddr < RAM and 1 <= size <= 16


def random_entry(rng: random.Random) -> int:
    """Mostly plausible entries (frames inside RAM, random flags), some garbage."""
    if rng.random() < 0.2:
        return rng.getrandbits(64)
    frame = rng.randrange(PAGES + 2) << 12
    flags = rng.getrandbits(9) | (rng.random() < 0.3) << 63
    return frame | flags | (1 if rng.random() < 0.8 else 0)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(MODES), accesses=st.integers(1, 60))
def test_random_tables_and_accesses_stay_in_guest_memory(seed, mode, accesses):
    rng = random.Random(seed)
    mem = GuestMemory.allocate(RAM)
    try:
        for page in range(PAGES):
            entries = b"".join(random_entry(rng).to_bytes(8, "little") for _ in range(512))
            mem.write(page * 4096, entries)
        cpu = CpuState()
        cpu.cr0 |= CR0_PE | mode[0]
        cpu.cr4, cpu.efer = mode[1], mode[2]
        cpu.cr3 = rng.randrange(PAGES + 1) << 12
        mmu = Mmu(mem, cpu, CheckingIo())
        mmu.mode_changed()
        for _ in range(accesses):
            linear = rng.choice([rng.getrandbits(64), rng.getrandbits(32), rng.randrange(RAM + 8192),
                                 0xFFFFFFFF80000000 | rng.getrandbits(31)])
            size = rng.choice((1, 2, 4, 8))
            user = rng.random() < 0.5
            op = rng.randrange(8)
            try:
                if op == 0:
                    mmu.write(linear, size, rng.getrandbits(64), user)
                elif op == 1:
                    mmu.fetch_bytes(linear, rng.randrange(1, 16), user)
                elif op == 2:
                    mmu.write_bytes(linear, bytes(rng.randrange(1, 40)), user)
                elif op == 3:
                    mmu.invlpg(linear)
                elif op == 4:
                    value = mmu.translate(linear, rng.choice((ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC)), user)
                    assert 0 <= value < 1 << 52
                elif op == 5:
                    mmu.mode_changed()
                else:
                    value = mmu.read(linear, size, user)
                    assert 0 <= value < 1 << (8 * size)
            except GuestFault as fault:
                assert fault.vector in (13, 14)
    finally:
        mem.close()
