"""The bt soft MMU: a TLB of shadow translations in front of the page walker.

Every guest memory access of the bt engine goes through `Mmu` with a linear
address (segmentation already applied). The hit path is one dict lookup and
one `struct.unpack_from` / `pack_into` on the host mapping of guest RAM:

    mmu = Mmu(memory, cpu, mmio)
    value = mmu.read(linear, 4, user=False)
    mmu.write(linear, 2, 0x1234, user=cpu.cpl == 3)

The TLB is six dicts (read/write/exec x supervisor/user) keyed by linear page
number; an entry is `(mapping, host offset of the page, physical page base)`.
`mapping` is None when the access cannot use the fast path: MMIO pages, and
for writes the pages whose writes must be seen (guest page tables, watched
code pages). Such entries still spare the slow path a page walk.

These entries are shadow page-table entries: derived from guest PTEs and
kept coherent with them (Blink `blink/memory.c`, Bochs `cpu/tlb.h`), by

* a non-global flush on a CR3 load and a full flush when CR0.PG/WP, CR4.PSE/
  PAE/PGE/SMEP, EFER.NXE/LMA or the A20 gate change (`mode_changed`);
* INVLPG, which drops the whole large page a linear address belongs to;
* tracking writes to guest paging structures: each entry records the
  physical addresses of the PTEs it was derived from, writes to those pages
  take the slow path, and a store to a PTE drops the entries derived from it
  ("shadow sync"). Hardware would keep a stale TLB entry until INVLPG; a
  guest cannot tell the difference except by relying on stale translations,
  which the SDM says it must not (Vol. 3 4.10.4.3).

Writes to pages registered with `watch_code_page` call `on_code_write(ppn)`
after the store, until `unwatch_code_page` — that is how the translator
invalidates blocks on self-modifying code. Device DMA into guest RAM bypasses
the MMU: whoever performs it reports it with `physical_written`.

Physical addresses outside RAM go to the PhysicalIo (MMIO); within a 4 KiB
page an access is all RAM or all MMIO because RAM regions are page-aligned.
"""

from __future__ import annotations

import struct
from typing import Callable, Optional, Protocol

from xvm.arch.x86.regs import CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, CR4_SMEP, EFER_LMA, EFER_NXE
from xvm.engines.bt.mmu.walker import ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, PAGING_NONE, PAGING_PAE, PageWalker
from xvm.engines.bt.state import CpuState
from xvm.errors import ConfigError
from xvm.memory.guest_memory import GuestMemory


class PhysicalIo(Protocol):
    """Guest-physical accesses outside RAM (the MMIO bus)."""

    def read(self, paddr: int, size: int) -> int: ...

    def write(self, paddr: int, size: int, value: int) -> None: ...


def _generic_unpack(size: int) -> Callable:
    def unpack_from(buf, offset: int) -> tuple:
        return (int.from_bytes(buf[offset:offset + size], "little"),)
    return unpack_from


def _generic_pack(size: int) -> Callable:
    def pack_into(buf, offset: int, value: int) -> None:
        buf[offset:offset + size] = value.to_bytes(size, "little")
    return pack_into


_STRUCTS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}
#: Indexed by access size 0..16: struct where one exists, else int.from_bytes.
_UNPACK = tuple(_STRUCTS[n].unpack_from if n in _STRUCTS else _generic_unpack(n) for n in range(17))
_PACK = tuple(_STRUCTS[n].pack_into if n in _STRUCTS else _generic_pack(n) for n in range(17))
_MASK = tuple((1 << (8 * n)) - 1 for n in range(17))

#: Control bits whose change invalidates every translation, global ones included.
_CR0_PAGING = CR0_PG | CR0_WP
_CR4_PAGING = CR4_PSE | CR4_PAE | CR4_PGE | CR4_SMEP
_EFER_PAGING = EFER_NXE | EFER_LMA
#: Beyond this many entries in one TLB dict or tracked PTEs, start over.
TLB_CAPACITY = 1 << 16
PAGE_MASK = 0xFFF


class Mmu:
    """Linear-address reads, writes and fetches for one vCPU (SDM Vol. 3 ch. 4)."""

    def __init__(self, memory: GuestMemory, cpu: CpuState, mmio: PhysicalIo) -> None:
        self.memory = memory
        self.cpu = cpu
        self.mmio = mmio
        self._regions = []
        for region in memory.regions:
            if region.guest_base & PAGE_MASK or region.size & PAGE_MASK:
                raise ConfigError(f"RAM region at {region.guest_base:#x} is not 4 KiB aligned; "
                                  "the bt engine needs page-aligned RAM")
            self._regions.append((region.guest_base, region.guest_end, region.mapping))
        self.on_code_write: Optional[Callable[[int], None]] = None
        self.stats = {"tlb_misses": 0, "page_walks": 0, "shadow_syncs": 0, "tlb_flushes": 0,
                      "invlpg": 0, "mmio_reads": 0, "mmio_writes": 0, "code_writes": 0}
        # TLB dicts, indexed access * 2 + user in self._tlbs.
        self._tlb_rs: dict = {}
        self._tlb_ru: dict = {}
        self._tlb_ws: dict = {}
        self._tlb_wu: dict = {}
        self._tlb_xs: dict = {}
        self._tlb_xu: dict = {}
        self._tlbs = (self._tlb_rs, self._tlb_ru, self._tlb_ws, self._tlb_wu, self._tlb_xs, self._tlb_xu)
        #: Linear page numbers of entries from global pages (survive CR3 loads), and of the others
        #: (what a CR3 load drops: its cost follows the entries filled since, not the TLB size).
        self._global: set = set()
        self._local: set = set()
        #: (page shift, linear >> shift) of a large page -> its 4 KiB pages in the TLB (for INVLPG).
        self._large: dict = {}
        #: PTE physical address -> linear pages whose entries were derived from it.
        self._pte_users: dict = {}
        #: Physical page numbers holding guest paging structures seen by the walker.
        self._pt_pages: set = set()
        #: Physical page numbers registered by the translator.
        self._code_pages: set = set()
        #: Physical page number -> linear pages with a write-TLB entry on it.
        self._write_rmap: dict = {}
        self._walker = PageWalker(cpu, self._read_entry, self._set_entry_bits)
        self._mode_key: tuple = ()
        #: Bumped whenever TLB entries are dropped (flush, INVLPG, page-table store): a
        #: translation remembered outside the MMU (the block cache's cross-page chain
        #: links) is still the TLB's while the generation has not moved.
        self.generation = 0
        self._configure()

    # --- mode changes and flushes -------------------------------------------
    def _configure(self) -> None:
        cpu = self.cpu
        self._walker.configure()
        self._paging = self._walker.paging
        self._lin_mask = (1 << 64) - 1 if cpu.efer & EFER_LMA else 0xFFFFFFFF
        self._a20_mask = ~0 if cpu.a20_enabled else ~(1 << 20)
        self._mode_key = (cpu.cr0 & _CR0_PAGING, cpu.cr4 & _CR4_PAGING, cpu.efer & _EFER_PAGING,
                          cpu.a20_enabled)

    def mode_changed(self) -> None:
        """Call after MOV CR0/CR3/CR4, WRMSR EFER or an A20 gate change.

        A change of a paging control bit flushes everything; any other call
        is taken as a CR3 load, which flushes all but global entries (SDM
        Vol. 3 4.10.4.1) — a same-value MOV CR3 flushes too, as Linux
        expects. Writes of other CR0/CR4 bits (TS, OSFXSR) cost a non-global
        flush; telling them apart from a same-value CR3 load is not worth
        the risk of a stale TLB.
        """
        cpu = self.cpu
        key = (cpu.cr0 & _CR0_PAGING, cpu.cr4 & _CR4_PAGING, cpu.efer & _EFER_PAGING, cpu.a20_enabled)
        if key != self._mode_key:
            self._configure()
            self.flush(True)
            return
        if self._paging == PAGING_PAE:
            self._walker.load_pdptes()
        self.flush(False)

    def flush(self, include_global: bool = True) -> None:
        """Drop TLB entries: all of them, or all but global pages."""
        self.stats["tlb_flushes"] += 1
        self.generation += 1
        if include_global or not self._global:
            for tlb in self._tlbs:
                tlb.clear()
            self._global.clear()
            self._local.clear()
            self._large.clear()
            self._pte_users.clear()
            self._pt_pages.clear()
            self._write_rmap.clear()
            return
        # Drop the non-global entries only; the tracking maps keep stale linear
        # pages, which at worst drop an entry that was already gone.
        tlbs = self._tlbs
        for vpn in self._local:
            for tlb in tlbs:
                tlb.pop(vpn, None)
        self._local.clear()

    def invlpg(self, linear: int) -> None:
        """INVLPG: drop the page holding `linear`, the whole page if it is large (SDM Vol. 3 4.10.4.1)."""
        self.stats["invlpg"] += 1
        linear &= self._lin_mask
        self._drop(linear >> 12)
        for shift in (21, 22, 30):
            for vpn in self._large.pop((shift, linear >> shift), ()):
                self._drop(vpn)

    def _drop(self, vpn: int) -> None:
        self.generation += 1
        for tlb in self._tlbs:
            tlb.pop(vpn, None)
        self._global.discard(vpn)

    # --- code-page watching ------------------------------------------------
    def watch_code_page(self, ppn: int) -> None:
        """Report writes to physical page `ppn` through on_code_write until unwatched."""
        if ppn not in self._code_pages:
            self._code_pages.add(ppn)
            self._evict_writers(ppn)

    def unwatch_code_page(self, ppn: int) -> None:
        """Stop reporting writes to `ppn` (its translations are gone)."""
        if ppn in self._code_pages:
            self._code_pages.discard(ppn)
            self._evict_writers(ppn)

    def physical_written(self, paddr: int, length: int) -> None:
        """Someone else (device DMA, a loader) stored into guest RAM: resync shadows and code pages.

        Stores that bypass the MMU are invisible to the write tracking; call
        this for them so page-table and code-page coherence still holds.
        """
        end = paddr + length
        while paddr < end:
            count = min(end - paddr, 0x1000 - (paddr & PAGE_MASK))
            self._after_write(paddr, count)
            paddr += count

    def _evict_writers(self, ppn: int) -> None:
        """Drop write-TLB entries on `ppn` so the next write re-decides fast or slow."""
        ws, wu = self._tlb_ws, self._tlb_wu
        for vpn in self._write_rmap.pop(ppn, ()):
            ws.pop(vpn, None)
            wu.pop(vpn, None)

    # --- hit paths ------------------------------------------------------------
    # read/write/fetch_bytes/read_bytes repeat the TLB probe inline on purpose: a shared helper would
    # add a call to every guest memory access and instruction fetch (STYLE.md 13).
    def read(self, linear: int, size: int, user: bool) -> int:
        """Read `size` bytes (little-endian) at a linear address."""
        entry = (self._tlb_ru if user else self._tlb_rs).get(linear >> 12)
        if entry is not None:
            offset = linear & 0xFFF
            mapping = entry[0]
            if mapping is not None and offset + size <= 0x1000:
                return _UNPACK[size](mapping, entry[1] + offset)[0]
        return self._read_slow(linear, size, user)

    def write(self, linear: int, size: int, value: int, user: bool) -> None:
        """Write the low `size` bytes of `value` (little-endian) at a linear address."""
        entry = (self._tlb_wu if user else self._tlb_ws).get(linear >> 12)
        if entry is not None:
            offset = linear & 0xFFF
            mapping = entry[0]
            if mapping is not None and offset + size <= 0x1000:
                _PACK[size](mapping, entry[1] + offset, value & _MASK[size])
                return
        self._write_slow(linear, size, value, user)

    def fetch_bytes(self, linear: int, n: int, user: bool) -> bytes:
        """Instruction fetch of up to `n` bytes: execute permission (NX, SMEP) is checked."""
        entry = (self._tlb_xu if user else self._tlb_xs).get(linear >> 12)
        if entry is not None:
            offset = linear & 0xFFF
            mapping = entry[0]
            if mapping is not None and offset + n <= 0x1000:
                start = entry[1] + offset
                return mapping[start:start + n]
        return self._bytes_slow(linear, n, ACCESS_EXEC, user)

    def read_bytes(self, linear: int, n: int, user: bool) -> bytes:
        """Read `n` bytes at a linear address (any length, any alignment)."""
        entry = (self._tlb_ru if user else self._tlb_rs).get(linear >> 12)
        if entry is not None:
            offset = linear & 0xFFF
            mapping = entry[0]
            if mapping is not None and offset + n <= 0x1000:
                start = entry[1] + offset
                return mapping[start:start + n]
        return self._bytes_slow(linear, n, ACCESS_READ, user)

    def write_bytes(self, linear: int, data: bytes, user: bool) -> None:
        """Write `data` at a linear address; every page is checked before any byte is stored."""
        lin_mask = self._lin_mask
        linear &= lin_mask
        pieces = []
        done = 0
        while done < len(data):
            addr = (linear + done) & lin_mask
            count = min(len(data) - done, 0x1000 - (addr & PAGE_MASK))
            pieces.append((self.translate(addr, ACCESS_WRITE, user), done, count))
            done += count
        for paddr, start, count in pieces:
            self._phys_write_bytes(paddr, data[start:start + count])

    def translate(self, linear: int, access: int, user: bool) -> int:
        """Guest-physical address of `linear` for `access`; #PF (with CR2 = linear) if not allowed."""
        entry = self._tlbs[access * 2 + user].get(linear >> 12)
        if entry is None:
            linear &= self._lin_mask
            entry = self._tlbs[access * 2 + user].get(linear >> 12)
            if entry is None:
                entry = self._fill(linear, access, user)
        return entry[2] | (linear & PAGE_MASK)

    # --- miss path --------------------------------------------------------------
    def _fill(self, linear: int, access: int, user: bool) -> tuple:
        """Walk the page tables for `linear` and install the TLB entry."""
        stats = self.stats
        stats["tlb_misses"] += 1
        vpn = linear >> 12
        if self._paging == PAGING_NONE:
            page = (linear & ~PAGE_MASK & self._a20_mask)
            is_global, shift, ptes = False, 12, ()
        else:
            stats["page_walks"] += 1
            page, is_global, shift, ptes = self._walker.walk(linear, access, user)
            page &= self._a20_mask
        tlbs = self._tlbs
        if (len(tlbs[access * 2 + user]) >= TLB_CAPACITY or len(self._pte_users) >= TLB_CAPACITY
                or len(self._write_rmap) >= TLB_CAPACITY):
            self.flush(True)
        pt_pages = self._pt_pages
        pte_users = self._pte_users
        for pte in ptes:
            users = pte_users.get(pte)
            if users is None:
                pte_users[pte] = users = set()
                if pte >> 12 not in pt_pages:
                    pt_pages.add(pte >> 12)
                    self._evict_writers(pte >> 12)
            users.add(vpn)
        ppn = page >> 12
        mapping, host = self._ram(page)
        if access == ACCESS_WRITE:
            if ppn in pt_pages or ppn in self._code_pages:
                mapping = None
            self._write_rmap.setdefault(ppn, set()).add(vpn)
        entry = (mapping, host, page)
        tlbs[access * 2 + user][vpn] = entry
        if is_global:
            self._global.add(vpn)
        else:
            self._local.add(vpn)
        if shift != 12:
            self._large.setdefault((shift, linear >> shift), set()).add(vpn)
        return entry

    def _ram(self, paddr: int) -> tuple:
        """(mapping, offset) of a RAM address, or (None, 0) outside RAM."""
        for base, end, mapping in self._regions:
            if base <= paddr < end:
                return mapping, paddr - base
        return None, 0

    def _read_slow(self, linear: int, size: int, user: bool) -> int:
        linear &= self._lin_mask
        if (linear & PAGE_MASK) + size <= 0x1000:
            return self._phys_read(self.translate(linear, ACCESS_READ, user), size)
        return int.from_bytes(self._bytes_slow(linear, size, ACCESS_READ, user), "little")

    def _write_slow(self, linear: int, size: int, value: int, user: bool) -> None:
        linear &= self._lin_mask
        if (linear & PAGE_MASK) + size <= 0x1000:
            self._phys_write(self.translate(linear, ACCESS_WRITE, user), size, value & _MASK[size])
        else:
            self.write_bytes(linear, (value & _MASK[size]).to_bytes(size, "little"), user)

    def _bytes_slow(self, linear: int, n: int, access: int, user: bool) -> bytes:
        lin_mask = self._lin_mask
        linear &= lin_mask
        parts = []
        done = 0
        while done < n:
            addr = (linear + done) & lin_mask
            count = min(n - done, 0x1000 - (addr & PAGE_MASK))
            parts.append(self._phys_read_bytes(self.translate(addr, access, user), count))
            done += count
        return b"".join(parts)

    # --- physical accesses ------------------------------------------------------
    def _phys_read(self, paddr: int, size: int) -> int:
        mapping, host = self._ram(paddr)
        if mapping is not None:
            return _UNPACK[size](mapping, host)[0]
        if size in _STRUCTS:
            self.stats["mmio_reads"] += 1
            return self.mmio.read(paddr, size) & _MASK[size]
        return int.from_bytes(self._phys_read_bytes(paddr, size), "little")

    def _phys_read_bytes(self, paddr: int, n: int) -> bytes:
        """`n` bytes within one page."""
        mapping, host = self._ram(paddr)
        if mapping is not None:
            return mapping[host:host + n]
        return b"".join(self._phys_read(paddr + i, 1).to_bytes(1, "little") for i in range(n))

    def _phys_write(self, paddr: int, size: int, value: int) -> None:
        """Store within one page, then tell the shadow tracker and the translator."""
        mapping, host = self._ram(paddr)
        if mapping is not None:
            _PACK[size](mapping, host, value)
        elif size in _STRUCTS:
            self.stats["mmio_writes"] += 1
            self.mmio.write(paddr, size, value)
        else:
            # Devices see 1/2/4/8-byte accesses only; odd sizes (x87 m80, SSE m128) go bytewise.
            self._phys_write_bytes(paddr, value.to_bytes(size, "little"))
            return
        self._after_write(paddr, size)

    def _phys_write_bytes(self, paddr: int, data: bytes) -> None:
        """Store `data` within one page."""
        mapping, host = self._ram(paddr)
        if mapping is not None:
            mapping[host:host + len(data)] = data
        else:
            self.stats["mmio_writes"] += len(data)
            for i, byte in enumerate(data):
                self.mmio.write(paddr + i, 1, byte)
        self._after_write(paddr, len(data))

    def _after_write(self, paddr: int, size: int) -> None:
        ppn = paddr >> 12
        if ppn in self._pt_pages:
            self._sync_ptes(paddr, size)
        if ppn in self._code_pages:
            self.stats["code_writes"] += 1
            callback = self.on_code_write
            if callback is not None:
                callback(ppn)

    def _sync_ptes(self, paddr: int, size: int) -> None:
        """The guest stored into a paging structure: drop entries derived from the PTEs it hit.

        Entries are keyed by their (4- or 8-byte aligned) address, so every
        4-byte step from the enclosing 8-byte boundary covers both widths.
        """
        pte_users = self._pte_users
        drop = self._drop
        for key in range(paddr & ~7, paddr + size, 4):
            users = pte_users.pop(key, None)
            if users:
                self.stats["shadow_syncs"] += 1
                for vpn in users:
                    drop(vpn)

    # --- walker callbacks -------------------------------------------------------
    def _read_entry(self, paddr: int, width: int) -> int:
        """A paging-structure entry; outside RAM it reads as 0 (not present)."""
        mapping, host = self._ram(paddr & self._a20_mask)
        if mapping is None or host + width > len(mapping):
            return 0
        return _UNPACK[width](mapping, host)[0]

    def _set_entry_bits(self, paddr: int, bits: int) -> None:
        """OR the A/D `bits` into the low byte of an entry; no shadow sync (no translation changes)."""
        mapping, host = self._ram(paddr & self._a20_mask)
        if mapping is not None:
            mapping[host] |= bits



