"""What one bt vCPU did, for `xvm run --stats`.

Counters are plain integer attributes, bumped by the run loop and the block
cache (an attribute increment is the cheapest thing either interpreter does);
`snapshot()` turns them, the instruction count and the soft MMU's counters
into the JSON-ready dict the machine prints.

`efficiency` is Popek and Goldberg's efficiency criterion measured: the
share of guest instructions that ran inside translated blocks, without the
monitor stepping in to interpret or emulate them. (A translated load or
store that reaches MMIO still counts as translated; such device accesses
are counted apart, in exits_to_device_emulation.)
"""

from __future__ import annotations


class BtStats:
    """Counters of one vCPU (see the module docstring)."""

    __slots__ = ("emulated_instructions", "blocks_translated", "cache_hits", "chained", "invalidations",
                 "device_exits", "interrupts", "faults", "idle_skips", "run_ns", "run_instructions",
                 "interpreted_instructions")

    def __init__(self) -> None:
        #: Instructions the interpreter stepped (page crossers, the instruction after STI or
        #: MOV SS, TF=1, traced runs).
        self.interpreted_instructions = 0
        #: Sensitive instructions emulated at the end of a block, after which the monitor
        #: takes over (trap-and-emulate without a separate fetch and decode). Every other
        #: retired instruction ran inside translated code.
        self.emulated_instructions = 0
        self.blocks_translated = 0
        #: Block lookups served from the cache, chained successors included.
        self.cache_hits = 0
        #: Of those, successors found through a block's chain link without a cache lookup.
        self.chained = 0
        #: Blocks dropped because the guest wrote to their code.
        self.invalidations = 0
        #: IN/OUT and MMIO accesses handed to the machine's exit dispatcher.
        self.device_exits = 0
        self.interrupts = 0
        self.faults = 0
        #: HLTs with IF=1 that skipped virtual time to the next timer deadline.
        self.idle_skips = 0
        #: Host time spent inside run() and the instructions retired meanwhile (for MIPS).
        self.run_ns = 0
        self.run_instructions = 0

    def snapshot(self, icount: int, mmu_stats: dict) -> dict:
        """The stats dict of `xvm run --stats` (JSON-serialisable)."""
        seconds = self.run_ns / 1e9
        translated = icount - self.interpreted_instructions - self.emulated_instructions
        return {
            "guest_instructions": icount,
            "mips": round(self.run_instructions / seconds / 1e6, 3) if seconds > 0 else 0.0,
            "run_seconds": round(seconds, 3),
            "translated_instructions": translated,
            "interpreted_instructions": self.interpreted_instructions,
            "emulated_instructions": self.emulated_instructions,
            "blocks_translated": self.blocks_translated,
            "cache_hits": self.cache_hits,
            "chained": self.chained,
            "invalidations_from_code_writes": self.invalidations,
            "shadow_page_table_syncs": mmu_stats.get("shadow_syncs", 0),
            "tlb_flushes": mmu_stats.get("tlb_flushes", 0),
            "page_walks": mmu_stats.get("page_walks", 0),
            "exits_to_device_emulation": self.device_exits,
            "interrupts_delivered": self.interrupts,
            "faults_delivered": self.faults,
            "idle_skips": self.idle_skips,
            "efficiency": round(translated / icount, 4) if icount else 0.0,
        }
