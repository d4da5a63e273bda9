"""Soft MMU: page walks in every paging mode, #PF error codes, TLB coherence, MMIO."""

from __future__ import annotations

import pytest

from xvm.arch.x86.regs import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PGE,
    CR4_PSE,
    CR4_SMEP,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
)
from xvm.engines.bt.faults import GP, PF, GuestFault
from xvm.engines.bt.mmu import ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, Mmu
from xvm.engines.bt.state import CpuState
from xvm.memory.guest_memory import GuestMemory

P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63
RAM = 4 << 20


class FakeIo:
    """Records MMIO accesses; reads return a recognisable pattern."""

    def __init__(self) -> None:
        self.log: list = []

    def read(self, paddr: int, size: int) -> int:
        self.log.append(("r", paddr, size))
        return 0xA5A5A5A5A5A5A5A5

    def write(self, paddr: int, size: int, value: int) -> None:
        self.log.append(("w", paddr, size, value))


def make(cr0: int = 0, cr4: int = 0, efer: int = 0, cr3: int = 0x1000):
    mem = GuestMemory.allocate(RAM)
    cpu = CpuState()
    cpu.cr0 |= cr0
    cpu.cr4 = cr4
    cpu.efer = efer
    cpu.cr3 = cr3
    io = FakeIo()
    return mem, cpu, Mmu(mem, cpu, io), io


def fault_of(fn, *args) -> GuestFault:
    with pytest.raises(GuestFault) as info:
        fn(*args)
    return info.value


# --- paging off --------------------------------------------------------------
def test_paging_off_is_identity_and_little_endian():
    mem, cpu, mmu, _ = make()
    mmu.write(0x1234, 4, 0x11223344, False)
    assert mem.read(0x1234, 4) == bytes((0x44, 0x33, 0x22, 0x11))
    assert mmu.read(0x1234, 2, False) == 0x3344
    assert mmu.translate(0x5678, ACCESS_WRITE, True) == 0x5678


def test_a20_masking_wraps_the_second_megabyte():
    mem, cpu, mmu, _ = make()
    mem.write_u32(0x10, 0xCAFEBABE)
    assert mmu.read(0x100010, 4, False) == 0
    cpu.a20_enabled = False
    mmu.mode_changed()
    assert mmu.read(0x100010, 4, False) == 0xCAFEBABE


def test_cross_page_access_and_bytes():
    mem, cpu, mmu, _ = make()
    mmu.write(0x1FFE, 4, 0xAABBCCDD, False)
    assert mem.read(0x1FFE, 4) == bytes.fromhex("DDCCBBAA")
    assert mmu.read(0x1FFD, 8, False) == 0xAABBCCDD00
    mmu.write_bytes(0x2FF0, bytes(range(40)), False)
    assert mmu.read_bytes(0x2FF0, 40, False) == bytes(range(40))
    assert mmu.fetch_bytes(0x2FFE, 4, False) == bytes((14, 15, 16, 17))


def test_mmio_routing_outside_ram():
    mem, cpu, mmu, io = make()
    assert mmu.read(0xFEE00030, 4, False) == 0xA5A5A5A5
    mmu.write(0xFEE000B0, 4, 0, False)
    assert io.log == [("r", 0xFEE00030, 4), ("w", 0xFEE000B0, 4, 0)]
    assert mmu.stats["mmio_reads"] == 1 and mmu.stats["mmio_writes"] == 1
    # The boundary of RAM: the last RAM bytes stay RAM, the next page is MMIO.
    mmu.write(RAM - 4, 4, 0x01020304, False)
    assert mem.read_u32(RAM - 4) == 0x01020304
    assert mmu.read(RAM - 2, 4, False) == 0xA5A50102


# --- 32-bit paging -----------------------------------------------------------
def paging32(pse: bool = False, wp: bool = False):
    mem, cpu, mmu, io = make(cr0=CR0_PE | CR0_PG | (CR0_WP if wp else 0), cr4=CR4_PSE if pse else 0)
    mmu.mode_changed()
    return mem, cpu, mmu, io


def test_32bit_walk_sets_accessed_and_dirty():
    mem, cpu, mmu, _ = paging32()
    mem.write_u32(0x1000 + 4 * 1, 0x2000 | P | RW | US)      # PDE for 0x00400000
    mem.write_u32(0x2000 + 4 * 5, 0x7000 | P | RW | US)      # PTE for 0x00405000
    mem.write_u32(0x7010, 0x12345678)
    assert mmu.read(0x405010, 4, True) == 0x12345678
    assert mem.read_u32(0x1004) & (A | D) == A
    assert mem.read_u32(0x2014) & (A | D) == A
    mmu.write(0x405010, 4, 0x55, True)
    assert mem.read_u32(0x7010) == 0x55
    assert mem.read_u32(0x2014) & (A | D) == A | D
    assert mem.read_u32(0x1004) & D == 0  # D is only set in the leaf
    assert mmu.stats["page_walks"] == 2


def test_32bit_4mib_page_with_pse():
    mem, cpu, mmu, _ = paging32(pse=True)
    mem.write_u32(0x1000 + 4 * 2, 0x00000000 | P | RW | PS)   # 0x00800000 -> physical 0
    assert mmu.translate(0x8ABCDE, ACCESS_READ, False) == 0x0ABCDE
    assert mem.read_u32(0x1008) & A


def test_32bit_pse_reserved_bit_raises_rsvd():
    mem, cpu, mmu, _ = paging32(pse=True)
    mem.write_u32(0x1000, P | PS | (1 << 21))
    f = fault_of(mmu.read, 0x10, 4, False)
    assert (f.vector, f.error_code, f.cr2) == (PF, 0x9, 0x10)


@pytest.mark.parametrize("user,write,pde,pte,code", [
    (False, False, 0, 0, None),                      # not-present PDE
    (True, True, P | RW | US, 0, 0x6),               # not-present PTE: W|U
    (True, False, P | RW, P | RW | US, 0x5),         # user read of a supervisor page
    (True, True, P | US, P | RW | US, 0x7),          # user write of a read-only PDE
    (False, True, P, P, "ok"),                       # supervisor write, CR0.WP=0
])
def test_32bit_error_codes(user, write, pde, pte, code):
    mem, cpu, mmu, _ = paging32()
    if pde:
        mem.write_u32(0x1000, 0x2000 | pde)
        mem.write_u32(0x2000 + 4 * 3, 0x9000 | pte)
    access = ACCESS_WRITE if write else ACCESS_READ
    if code == "ok":
        assert mmu.translate(0x3004, access, user) == 0x9004
        return
    f = fault_of(mmu.translate, 0x3004, access, user)
    expected = (0x2 if write else 0) | (0x4 if user else 0) if code is None else code
    assert (f.vector, f.error_code, f.cr2) == (PF, expected, 0x3004)
    # A faulting access writes no A/D flags.
    assert mem.read_u32(0x1000) & A == 0


def test_cr0_wp_blocks_supervisor_writes_to_read_only_pages():
    mem, cpu, mmu, _ = paging32(wp=True)
    mem.write_u32(0x1000, 0x2000 | P | RW | US)
    mem.write_u32(0x2000, 0x9000 | P | US)
    f = fault_of(mmu.write, 0x10, 4, 1, False)
    assert f.error_code == 0x3
    cpu.cr0 &= ~CR0_WP
    mmu.mode_changed()
    mmu.write(0x10, 4, 1, False)
    assert mem.read_u32(0x9010) == 1


# --- PAE and 4-level -----------------------------------------------------------
def pae(nxe: bool = True, smep: bool = False):
    mem, cpu, mmu, io = make(cr0=CR0_PE | CR0_PG, cr4=CR4_PAE | (CR4_SMEP if smep else 0),
                             efer=EFER_NXE if nxe else 0, cr3=0x1000)
    mem.write_u64(0x1000 + 8 * 1, 0x2000 | P)                   # PDPTE 1: 0x40000000
    mem.write_u64(0x2000 + 8 * 0, 0x3000 | P | RW | US)          # PDE
    mem.write_u64(0x3000 + 8 * 4, 0x8000 | P | RW | US | XD)     # PTE 0x40004000, no-execute
    mem.write_u64(0x3000 + 8 * 5, 0x9000 | P | RW)               # PTE 0x40005000, supervisor
    mem.write_u64(0x2000 + 8 * 1, 0x200000 | P | RW | PS)        # 2 MiB page at 0x40200000
    mmu.mode_changed()
    return mem, cpu, mmu, io


def test_pae_walk_nx_and_large_pages():
    mem, cpu, mmu, _ = pae()
    assert mmu.translate(0x40004123, ACCESS_WRITE, True) == 0x8123
    assert mem.read_u64(0x3020) & (A | D) == A | D
    f = fault_of(mmu.fetch_bytes, 0x40004000, 1, False)
    assert (f.error_code, f.cr2) == (0x11, 0x40004000)   # P | I/D
    assert mmu.translate(0x40212345, ACCESS_READ, False) == 0x212345
    # The PDPTEs are registers loaded at CR3 time: a later write is not seen.
    mem.write_u64(0x1000 + 8 * 2, 0x2000 | P)
    assert fault_of(mmu.read, 0x80000000, 1, False).error_code == 0
    mmu.mode_changed()  # MOV CR3, same value
    assert mmu.translate(0x80004000, ACCESS_READ, False) == 0x8000


def test_pae_xd_bit_is_reserved_without_nxe():
    mem, cpu, mmu, _ = pae(nxe=False)
    f = fault_of(mmu.read, 0x40004000, 1, True)
    assert f.error_code == 0x1 | 0x4 | 0x8   # P | U | RSVD
    # Without NXE (and SMEP) a fetch fault does not report I/D.
    mem.write_u64(0x3000 + 8 * 6, 0x9000)
    assert fault_of(mmu.fetch_bytes, 0x40006000, 1, False).error_code == 0


def test_smep_blocks_supervisor_fetch_from_user_pages():
    mem, cpu, mmu, _ = pae(nxe=False, smep=True)
    mem.write_u64(0x3000 + 8 * 4, 0x8000 | P | RW | US)
    f = fault_of(mmu.fetch_bytes, 0x40004000, 1, False)
    assert f.error_code == 0x11
    assert mmu.fetch_bytes(0x40004000, 1, True) == b"\0"
    assert mmu.fetch_bytes(0x40005000, 1, False) == b"\0"


def long_mode():
    mem, cpu, mmu, io = make(cr0=CR0_PE | CR0_PG, cr4=CR4_PAE | CR4_PGE, efer=EFER_LME | EFER_LMA | EFER_NXE,
                             cr3=0x1000)
    mem.write_u64(0x1000 + 8 * 511, 0x2000 | P | RW)            # PML4E: 0xFFFFFF80_00000000
    mem.write_u64(0x2000 + 8 * 510, 0x3000 | P | RW)            # PDPTE: 0xFFFFFFFF_80000000
    mem.write_u64(0x3000, 0x4000 | P | RW)                      # PDE
    mem.write_u64(0x4000 + 8 * 1, 0x9000 | P | RW | G)          # global PTE 0x...80001000
    mem.write_u64(0x4000 + 8 * 2, 0xA000 | P | RW)              # PTE 0x...80002000
    mem.write_u64(0x1000, 0x5000 | P | RW | US)                 # PML4E 0: low half
    mem.write_u64(0x5000 + 8 * 1, 0x40000000 | P | RW | US | PS)  # 1 GiB page at 1 GiB -> 1 GiB
    mmu.mode_changed()
    return mem, cpu, mmu, io


KERNEL = 0xFFFFFFFF80000000


def test_4level_walk_and_1gib_page_outside_ram_is_mmio():
    mem, cpu, mmu, io = long_mode()
    mem.write_u64(0x9008, 0x1122334455667788)
    assert mmu.read(KERNEL + 0x1008, 8, False) == 0x1122334455667788
    for addr in (0x1000 + 8 * 511, 0x2000 + 8 * 510, 0x3000, 0x4008):
        assert mem.read_u64(addr) & A
    assert mmu.translate(0x40001234, ACCESS_READ, True) == 0x40001234
    assert mmu.read(0x40001234, 2, True) == 0xA5A5
    assert io.log == [("r", 0x40001234, 2)]


def test_4level_reserved_bits_and_non_canonical():
    mem, cpu, mmu, _ = long_mode()
    mem.write_u64(0x4000 + 8 * 3, 0xB000 | P | (1 << 45))     # above MAXPHYADDR
    assert fault_of(mmu.read, KERNEL + 0x3000, 1, False).error_code == 0x9
    mem.write_u64(0x1000 + 8 * 2, 0x6000 | P | PS)             # PS in a PML4E
    assert fault_of(mmu.read, 2 << 39, 1, False).error_code == 0x9
    assert fault_of(mmu.read, 1 << 47, 1, False).vector == GP


def test_page_table_outside_ram_reads_as_not_present():
    mem, cpu, mmu, io = long_mode()
    mem.write_u64(0x1000 + 8 * 3, 0xF0000000 | P | RW)         # PML4E -> table in the MMIO hole
    assert fault_of(mmu.read, 3 << 39, 1, False).error_code == 0
    assert io.log == []


# --- coherence -----------------------------------------------------------------
def test_global_pages_survive_cr3_load_but_not_pge_toggle():
    mem, cpu, mmu, _ = long_mode()
    mmu.read(KERNEL + 0x1000, 1, False)
    mmu.read(KERNEL + 0x2000, 1, False)
    # Rewrite the tables behind the MMU's back (A/D-free write through RAM).
    mem.write_u64(0x4008, 0xC000 | P | RW | G)
    mem.write_u64(0x4010, 0xD000 | P | RW)
    mmu.mode_changed()  # MOV CR3 (same value): non-global flush
    assert mmu.translate(KERNEL + 0x1000, ACCESS_READ, False) == 0x9000   # stale, global
    assert mmu.translate(KERNEL + 0x2000, ACCESS_READ, False) == 0xD000
    cpu.cr4 &= ~CR4_PGE
    mmu.mode_changed()
    assert mmu.translate(KERNEL + 0x1000, ACCESS_READ, False) == 0xC000


def test_invlpg_drops_one_page_and_whole_large_pages():
    mem, cpu, mmu, _ = pae()
    assert mmu.translate(0x40004000, ACCESS_READ, False) == 0x8000
    assert mmu.translate(0x40210000, ACCESS_READ, False) == 0x210000
    assert mmu.translate(0x40220000, ACCESS_READ, False) == 0x220000
    mem.write(0x3020, (0xA000 | P | RW | US).to_bytes(8, "little"))
    mem.write(0x2008, (0x400000 | P | RW | PS).to_bytes(8, "little"))
    assert mmu.translate(0x40004000, ACCESS_READ, False) == 0x8000
    mmu.invlpg(0x40004abc)
    assert mmu.translate(0x40004000, ACCESS_READ, False) == 0xA000
    mmu.invlpg(0x40200000)  # any address in the 2 MiB page drops all of it
    assert mmu.translate(0x40220000, ACCESS_READ, False) == 0x420000


def test_guest_pte_store_resyncs_the_shadow_entry():
    mem, cpu, mmu, _ = pae()
    # Map the page-table page itself at 0x40006000 so the guest can edit its PTEs.
    mem.write_u64(0x3000 + 8 * 6, 0x3000 | P | RW)
    assert mmu.translate(0x40004000, ACCESS_WRITE, False) == 0x8000
    mmu.write(0x40006000 + 8 * 4, 8, 0xB000 | P | RW | US, False)   # no INVLPG
    assert mmu.stats["shadow_syncs"] == 1
    assert mmu.translate(0x40004000, ACCESS_WRITE, False) == 0xB000
    # A store to an unrelated PTE slot of the same page drops nothing else.
    mmu.translate(0x40005000, ACCESS_READ, False)
    mmu.write(0x40006000 + 8 * 100, 4, 0, False)
    assert mmu.stats["shadow_syncs"] == 1


def test_page_becoming_a_page_table_loses_its_fast_write_entry():
    mem, cpu, mmu, _ = pae()
    mem.write_u64(0x3000 + 8 * 7, 0x7000 | P | RW)    # 0x40007000 -> 0x7000 (just data, for now)
    mmu.write(0x40007000, 4, 0, False)
    # The guest now uses physical 0x7000 as the page table of 0x40400000.
    mmu.write(0x40007000, 8, 0xC000 | P | RW, False)
    mem.write_u64(0x2000 + 8 * 2, 0x7000 | P | RW)
    assert mmu.translate(0x40400000, ACCESS_READ, False) == 0xC000
    mmu.write(0x40007000, 8, 0xE000 | P | RW, False)
    assert mmu.translate(0x40400000, ACCESS_READ, False) == 0xE000


def test_code_page_watch_reports_writes():
    mem, cpu, mmu, _ = make()
    seen = []
    mmu.on_code_write = seen.append
    mmu.write(0x5000, 4, 1, False)           # fast entry exists before watching
    mmu.watch_code_page(5)
    mmu.write(0x5004, 4, 1, False)
    mmu.write_bytes(0x4FFF, b"ab", False)
    assert seen == [5, 5]
    mmu.unwatch_code_page(5)
    mmu.write(0x5008, 4, 1, False)
    assert seen == [5, 5]
    assert mmu.read(0x5004, 4, False) == 1


def test_write_crossing_into_a_faulting_page_stores_nothing():
    mem, cpu, mmu, _ = pae()
    mem.write_u64(0x3000 + 8 * 3, 0x7000 | P | RW)     # 0x40003000 present
    mem.write_u64(0x3000 + 8 * 4, 0x8000)               # 0x40004000 not present
    f = fault_of(mmu.write, 0x40003FFE, 4, 0xFFFFFFFF, False)
    assert (f.error_code, f.cr2) == (0x2, 0x40004000)
    assert mem.read_u16(0x7FFE) == 0


def test_efer_change_flushes_everything():
    mem, cpu, mmu, _ = pae()
    assert mmu.fetch_bytes(0x40005000, 1, False) == b"\0"
    cpu.efer &= ~EFER_NXE
    mmu.mode_changed()
    assert mmu.stats["tlb_flushes"] >= 1
    assert mmu.translate(0x40005000, ACCESS_EXEC, False) == 0x9000


def test_supervisor_entry_does_not_serve_user_accesses():
    mem, cpu, mmu, _ = pae()
    assert mmu.read(0x40005000, 4, False) == 0      # supervisor page, cached for supervisor reads
    f = fault_of(mmu.read, 0x40005000, 4, True)
    assert (f.error_code, f.cr2) == (0x5, 0x40005000)
    f = fault_of(mmu.write, 0x40005000, 4, 0, True)
    assert f.error_code == 0x7


def test_pae_pdpte_reserved_bits():
    mem, cpu, mmu, _ = pae()
    mem.write_u64(0x1000 + 8 * 3, 0x2000 | P | RW)   # R/W is reserved in a PAE PDPTE
    mmu.mode_changed()
    f = fault_of(mmu.read, 0xC0000000, 1, False)
    assert f.error_code == 0x9


def test_tlb_hit_path_after_a_walk_needs_no_further_walks():
    mem, cpu, mmu, _ = long_mode()
    for i in range(100):
        mmu.read(KERNEL + 0x1000 + 8 * i, 8, False)
        mmu.write(KERNEL + 0x2000 + 8 * i, 8, i, False)
    assert mmu.stats["page_walks"] == 2


def test_stores_behind_the_mmu_are_reported_with_physical_written():
    mem, cpu, mmu, _ = pae()
    seen = []
    mmu.on_code_write = seen.append
    mmu.watch_code_page(0x8)
    assert mmu.translate(0x40004000, ACCESS_READ, False) == 0x8000
    # A DMA engine rewrites a PTE and a code page directly in RAM.
    mem.write_u64(0x3000 + 8 * 4, 0xC000 | P | RW)
    mem.write(0x8FFE, b"\x90\x90\x90\x90")
    mmu.physical_written(0x3000 + 8 * 4, 8)
    mmu.physical_written(0x8FFE, 4)
    assert mmu.translate(0x40004000, ACCESS_READ, False) == 0xC000
    assert seen == [0x8]
