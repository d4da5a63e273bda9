"""The translation cache: blocks by physical address and mode, chained, kept coherent.

    cache = BlockCache(cpu, mmu, io, counters)
    cache.run(vcpu)      # blocks from CS:RIP until vcpu._poll_at; False: interpret one instruction first

Key. A block is found by (physical address, RIP, CS base, CS limit, code
size, CPL): the physical address because the same linear address means other
code after a CR3 load, and the linear view (RIP and CS) because the
translated code carries RIP values and the CS-limit cut. Everything else a
handler depends on (CR0, EFER, segment caches, IOPL) it reads at run time,
and the instructions that change it are never inside a block.

Chaining. When a block ends with RIP on the same linear page it started on,
the successor is on the same physical page at the same mode, so the block
remembers it (two links: taken and fall-through, SDM jump targets being
direct) and the next run skips the address translation and the dict lookup.
A link to another linear page (a call, a return) also remembers the soft
MMU's generation: it holds while no TLB entry has been dropped since (no
flush, INVLPG or page-table store), as the target's translation is then the
one the lookup found.
Links are followed only from one block straight to the next inside `run`
(anything else — an interrupt, a fault, an interpreted instruction, a
sensitive tail that is not RESUMABLE — ends `run`, and the next call starts
with a lookup), and only to valid blocks.

Coherence. Every page holding a block is registered with the soft MMU
(`watch_code_page`); a store to it calls `on_code_write(ppn)`. The blocks of
that page whose bytes changed are dropped (a data store that shares the page
with code costs a comparison, not a retranslation); a page with no blocks left
is unwatched. A store inside a running block sets the `smc` flag, which makes
the block return right after the store, so self-modifying code resumes from
a fresh translation of the patched bytes. Device DMA bypasses the MMU and is
not tracked (see the engine's notes).
"""

from __future__ import annotations

from typing import Optional

from xvm.arch.x86.regs import RFLAGS_IF, RFLAGS_TF
from xvm.engines.bt.mmu.walker import ACCESS_EXEC
from xvm.engines.bt.state import CS, MODE_LONG
from xvm.engines.bt.translate.blocks import RESUMABLE, is_sensitive, scan
from xvm.engines.bt.translate.codegen import generate

try:
    from pypyjit import residual_call as _RESIDUAL_CALL
except ImportError:  # CPython: every call is a plain call
    _RESIDUAL_CALL = None
#: Above this many blocks the cache starts over (a guest that generates code forever).
MAX_BLOCKS = 1 << 16
_PAGE = 0x1000


class Block:
    """One translated block and its chain links."""

    __slots__ = ("fn", "key", "paddr", "raw", "vpn", "valid", "rip0", "next0", "gen0", "rip1", "next1", "gen1",
                 "sensitive", "resumable", "pause")

    def __init__(self, fn, key: tuple, paddr: int, raw: bytes, vpn: int, last) -> None:
        self.fn = fn
        #: Its last instruction is sensitive: the monitor may have to look after it.
        self.sensitive = is_sensitive(last)
        #: ... one after which translated execution may go on (blocks.RESUMABLE).
        self.resumable = self.sensitive and last.op.mnemonic in RESUMABLE
        #: ... and is PAUSE, the spin-wait hint the monitor charges virtual time for.
        self.pause = last.op.mnemonic == "pause"
        self.key = key
        self.paddr = paddr
        #: The guest bytes it was translated from (checked when its page is written).
        self.raw = raw
        #: Linear page number of its first byte (chaining stays on this page).
        self.vpn = vpn
        self.valid = True
        #: Links: RIP, block, and the MMU generation for another page (-1: the same page).
        self.rip0 = -1
        self.next0: Optional[Block] = None
        self.gen0 = -1
        self.rip1 = -1
        self.next1: Optional[Block] = None
        self.gen1 = -1


class BlockCache:
    """Translated blocks of one vCPU (module docstring)."""

    def __init__(self, cpu, mmu, io, counters) -> None:
        self.cpu = cpu
        self.mmu = mmu
        self.io = io
        self.counters = counters
        self._blocks: dict = {}
        #: Physical page number -> blocks on it.
        self._pages: dict = {}
        #: Keys where no block can start (a sensitive instruction, a page crosser): interpret.
        self._untranslatable: set = set()
        #: Physical page number -> those keys on it.
        self._stops: dict = {}
        #: Set by on_code_write while a block runs: it returns after the current store.
        self._smc = [0]
        mmu.on_code_write = self._on_code_write

    def __len__(self) -> int:
        return len(self._blocks)

    def run(self, vcpu) -> bool:
        """Run translated blocks from CS:RIP until `vcpu._poll_at` instructions have retired.

        Returns False when the instruction at CS:RIP must go through the
        interpreter (nothing ran then), True otherwise. Guest faults propagate
        with the state of the faulting instruction. `vcpu._poll_at` is re-read
        after every block: kick() and device accesses lower it to stop early.
        """
        cpu = self.cpu
        mmu = self.mmu
        smc = self._smc
        block = self._lookup(cpu.rip)
        if block is None:
            return False
        chained = 0
        previous = None
        residual_call = _RESIDUAL_CALL
        interrupts_were_off = False
        try:
            while True:
                if block.sensitive:
                    interrupts_were_off = not cpu.rflags & RFLAGS_IF
                if residual_call is None or block is previous:
                    block.fn()
                else:
                    # PyPy: do not trace into the block from this loop. Inlining every
                    # block into the dispatch loop's trace guards on which block comes
                    # next, and a kernel's tens of thousands of blocks then live in
                    # bridges and the blackhole interpreter (4x slower measured); called
                    # residually, each hot block is compiled on its own. A block that
                    # loops on itself is inlined, so guest loops become machine loops.
                    residual_call(block.fn)
                previous = block
                if smc[0]:
                    smc[0] = 0  # a store hit translated code (a sensitive tail did not run then)
                    return True
                if block.sensitive and not self._after_sensitive(block, vcpu, interrupts_were_off):
                    return True
                if cpu.icount >= vcpu._poll_at:
                    return True
                rip = cpu.rip
                if block.rip0 == rip:
                    successor = block.next0
                    generation = block.gen0
                elif block.rip1 == rip:
                    successor = block.next1
                    generation = block.gen1
                else:
                    successor = None
                if successor is not None and successor.valid and (generation < 0 or generation == mmu.generation):
                    chained += 1
                    block = successor
                    continue
                successor = self._lookup(rip)
                if successor is None:
                    return False
                # Link them (SDM: direct targets); keep the first link, let the second slot
                # follow the latest other target.
                generation = -1 if block.vpn == successor.vpn else mmu.generation
                if block.next0 is None or not block.next0.valid or block.rip0 == rip:
                    block.rip0, block.next0, block.gen0 = rip, successor, generation
                else:
                    block.rip1, block.next1, block.gen1 = rip, successor, generation
                block = successor
        finally:
            self.counters.chained += chained
            self.counters.cache_hits += chained

    def _after_sensitive(self, block: Block, vcpu, interrupts_were_off: bool) -> bool:
        """A block's sensitive tail ran: tell the monitor what it must re-examine.

        IF turned on (STI, POPF, IRET), an interrupt shadow (STI, MOV SS) or
        HLT: the run loop must look at interrupts before going on. Returns
        True when translated execution may go on after it (a RESUMABLE tail,
        nothing for the monitor, TF clear).
        """
        cpu = self.cpu
        self.counters.emulated_instructions += 1
        if block.pause:
            vcpu.spin_wait()
        if (interrupts_were_off and cpu.rflags & RFLAGS_IF) or cpu.interrupt_shadow or cpu.halted:
            vcpu._poll_at = 0
            return False
        return block.resumable and not cpu.rflags & RFLAGS_TF

    def _lookup(self, rip: int) -> Optional[Block]:
        """The block at CS:RIP, translated now if needed; None when it cannot start here."""
        cpu = self.cpu
        cs = cpu.segs[CS]
        linear = cs.base + rip
        if cpu.mode != MODE_LONG:
            linear &= 0xFFFFFFFF
        cpl = cpu.cpl
        # Instruction fetch permission and #PF come from here, as from a fetch.
        paddr = self.mmu.translate(linear, ACCESS_EXEC, cpl == 3)
        key = (paddr, rip, cs.base, cs.limit, cpu.code_bits, cpl)
        block = self._blocks.get(key)
        if block is not None:
            self.counters.cache_hits += 1
            return block
        if key in self._untranslatable:
            return None
        return self._translate(key, linear, rip, paddr)

    def _translate(self, key: tuple, linear: int, rip: int, paddr: int) -> Optional[Block]:
        cpu = self.cpu
        mmu = self.mmu
        if len(self._blocks) + len(self._untranslatable) >= MAX_BLOCKS:
            self.clear()
        user = cpu.cpl == 3
        code = mmu.fetch_bytes(linear, _PAGE - (linear & 0xFFF), user)
        bits = cpu.code_bits
        if mmu.memory.contains(paddr, len(code)):
            instrs = scan(code, rip, bits, None if bits == 64 else cpu.segs[CS].limit)
        else:
            instrs = []  # code in MMIO (a ROM device): every fetch must reach the device
        ppn = paddr >> 12
        mmu.watch_code_page(ppn)
        if not instrs:
            self._untranslatable.add(key)
            self._stops.setdefault(ppn, []).append(key)
            return None
        length = sum(ins.length for ins in instrs)
        fn = generate(instrs, rip, cpu, mmu, self.io, self._smc)
        block = Block(fn, key, paddr, bytes(code[:length]), linear >> 12, instrs[-1])
        self._blocks[key] = block
        self._pages.setdefault(ppn, []).append(block)
        self.counters.blocks_translated += 1
        return block

    def _on_code_write(self, ppn: int) -> None:
        """The guest stored into page `ppn`, which holds translations: drop the ones whose bytes changed."""
        blocks = self._pages.pop(ppn, [])
        memory = self.mmu.memory
        keep = []
        dropped = 0
        for block in blocks:
            if memory.read(block.paddr, len(block.raw)) == block.raw:
                keep.append(block)
            else:
                block.valid = False
                del self._blocks[block.key]
                dropped += 1
        if dropped:
            self.counters.invalidations += dropped
            self._smc[0] = 1
        # An untranslatable start may have become translatable: forget those, they are cheap to redo.
        for key in self._stops.pop(ppn, ()):
            self._untranslatable.discard(key)
        if keep:
            self._pages[ppn] = keep
        else:
            self.mmu.unwatch_code_page(ppn)

    def clear(self) -> None:
        """Drop every translation and stop watching their pages."""
        for block in self._blocks.values():
            block.valid = False
        for ppn in set(self._pages) | set(self._stops):
            self.mmu.unwatch_code_page(ppn)
        self._blocks.clear()
        self._pages.clear()
        self._untranslatable.clear()
        self._stops.clear()
