"""The translator: where blocks end, what the generated code does, and the cache's coherence."""

from __future__ import annotations

from xvm.engines.bt.cpu import execute_one
from xvm.engines.bt.mmu.softmmu import Mmu
from xvm.engines.bt.state import CS, CpuState
from xvm.engines.bt.stats import BtStats
from xvm.engines.bt.translate.blocks import MAX_BLOCK_INSTRUCTIONS, is_sensitive, scan
from xvm.engines.bt.translate.cache import BlockCache
from xvm.engines.bt.translate.codegen import CHECK, RIP, SAVE, block_shape, generate
from xvm.memory.guest_memory import GuestMemory

MOV_AX_1 = bytes.fromhex("b80100")        # mov ax, 1
INC_BX = bytes.fromhex("43")              # inc bx
STORE = bytes.fromhex("a30005")           # mov [0x500], ax
JMP_SELF = bytes.fromhex("ebfe")          # jmp $
BACK_1 = bytes.fromhex("ebfd")            # jmp back over a 1-byte instruction
HLT = bytes.fromhex("f4")


def names(instrs: list) -> list:
    return [ins.op.handler for ins in instrs]


# --- where blocks end ------------------------------------------------------------

def test_a_block_ends_after_a_branch():
    code = MOV_AX_1 + INC_BX + JMP_SELF + MOV_AX_1
    assert names(scan(code, 0x100, 16, 0xFFFF)) == ["mov_Zv_Iv", "inc_Zv", "jmp_Jb"]


def test_a_sensitive_instruction_is_the_last_of_its_block():
    for sensitive in ("fa", "fb", "9d", "cf", "e6e9", "ee", "f4", "8ed0", "0f20c0", "0f22c0", "ea00000000",
                      "cd10", "0f0118", "0fa2", "0f31", "17"):
        code = MOV_AX_1 + bytes.fromhex(sensitive) + MOV_AX_1
        instrs = scan(code, 0, 16, 0xFFFF)
        assert len(instrs) == 2 and is_sensitive(instrs[-1]), sensitive
        assert len(scan(bytes.fromhex(sensitive) + MOV_AX_1, 0, 16, 0xFFFF)) == 1, sensitive


def test_segment_loads_other_than_ss_stay_in_the_block():
    code = bytes.fromhex("8ed8") + bytes.fromhex("8ec0") + MOV_AX_1   # mov ds, ax; mov es, ax
    assert len(scan(code, 0, 16, 0xFFFF)) == 3


def test_a_rep_string_instruction_ends_its_block():
    code = MOV_AX_1 + bytes.fromhex("f3a4") + MOV_AX_1                 # rep movsb
    assert names(scan(code, 0, 16, 0xFFFF)) == ["mov_Zv_Iv", "movsb_Yb_Xb"]
    code = bytes.fromhex("a4") + MOV_AX_1                             # movsb without REP continues
    assert len(scan(code, 0, 16, 0xFFFF)) == 2


def test_a_block_stops_before_the_page_end_the_cs_limit_and_bad_encodings():
    assert names(scan(MOV_AX_1 + bytes.fromhex("b801"), 0, 16, 0xFFFF)) == ["mov_Zv_Iv"]   # crosses the page
    assert names(scan(MOV_AX_1 + MOV_AX_1, 0xFFFB, 16, 0xFFFF)) == ["mov_Zv_Iv"]          # would pass IP 0xFFFF
    assert names(scan(MOV_AX_1 + MOV_AX_1, 0x10, 16, 0x14)) == ["mov_Zv_Iv"]             # CS limit
    assert names(scan(MOV_AX_1 + bytes.fromhex("0fff"), 0, 16, 0xFFFF)) == ["mov_Zv_Iv"]  # #UD
    assert len(scan(INC_BX * 200, 0, 16, 0xFFFF)) == MAX_BLOCK_INSTRUCTIONS


# --- generated code ---------------------------------------------------------------

def test_shape_bits_follow_the_decoded_form():
    instrs = scan(MOV_AX_1 + STORE + bytes.fromhex("50") + JMP_SELF, 0, 16, 0xFFFF)   # mov, store, push, jmp
    assert block_shape(instrs) == (0, SAVE | CHECK, SAVE | CHECK, RIP)
    rip_relative = scan(bytes.fromhex("8b0500000000") + HLT, 0, 64, None)            # mov eax, [rip]; hlt
    assert block_shape(rip_relative) == (SAVE | RIP | CHECK, SAVE | RIP)


def test_blocks_of_one_shape_share_their_code():
    memory = GuestMemory.allocate(1 << 20)
    cpu = CpuState()
    mmu = Mmu(memory, cpu, None)
    a = generate(scan(MOV_AX_1 + INC_BX, 0, 16, 0xFFFF), 0, cpu, mmu, None, [0])
    b = generate(scan(INC_BX + MOV_AX_1, 0x40, 16, 0xFFFF), 0x40, cpu, mmu, None, [0])
    assert a.__code__ == b.__code__  # one compile...
    assert a.__code__ is not b.__code__  # ... copied: PyPy's JIT traces each block on its own
    b()
    assert cpu.regs[0] == 1 and cpu.regs[3] == 1
    assert cpu.rip == 0x44 and cpu.icount == 2
    memory.close()


# --- the cache ---------------------------------------------------------------

class Loop:
    """A real-mode CPU at 0:0x1000 over `code`, with a block cache and a poll limit."""

    def __init__(self, code: bytes) -> None:
        self.memory = GuestMemory.allocate(1 << 20)
        self.memory.write(0x1000, code)
        self.cpu = CpuState()
        self.cpu.segs[CS].base = 0
        self.cpu.segs[CS].selector = 0
        self.cpu.rip = 0x1000
        self.mmu = Mmu(self.memory, self.cpu, None)
        self.counters = BtStats()
        self.cache = BlockCache(self.cpu, self.mmu, None, self.counters)
        self._poll_at = 0

    def run(self, instructions: int) -> None:
        """Run about `instructions` instructions, interpreting what the cache cannot run."""
        self._poll_at = self.cpu.icount + instructions
        while self.cpu.icount < self._poll_at:
            if not self.cache.run(self):
                execute_one(self.cpu, self.mmu, None)


def test_chained_blocks_skip_the_lookup():
    loop = Loop(INC_BX + BACK_1)                          # one block looping on itself
    loop.run(1000)
    assert loop.counters.blocks_translated == 1
    assert loop.counters.chained >= 490
    assert loop.cpu.regs[3] >= 500


def test_links_to_another_page_hold_until_the_tlb_drops_an_entry():
    loop = Loop(INC_BX + bytes.fromhex("e9fc0f"))           # inc bx; jmp 0x2000
    loop.memory.write(0x2000, bytes.fromhex("41e9fcef"))     # inc cx; jmp 0x1000
    loop.run(1000)
    assert loop.counters.blocks_translated == 2
    assert loop.counters.chained >= 490                     # page to page without lookups
    lookups = loop.counters.cache_hits - loop.counters.chained
    loop.mmu.flush()                                        # the pages may map elsewhere now
    loop.run(10)
    assert loop.counters.cache_hits - loop.counters.chained >= lookups + 1
    assert loop.cpu.regs[3] & 0xFFFF >= 250 and loop.cpu.regs[1] & 0xFFFF >= 250


def test_a_data_store_into_a_code_page_keeps_its_blocks():
    loop = Loop(INC_BX + BACK_1)
    loop.run(10)
    assert len(loop.cache) == 1
    loop.mmu.write(0x1800, 2, 0xBEEF, False)                # same page, not code
    assert len(loop.cache) == 1 and loop.counters.invalidations == 0
    loop.mmu.write(0x1000, 1, 0x4B, False)                  # inc bx -> dec bx
    assert len(loop.cache) == 0 and loop.counters.invalidations == 1
    assert 0x1 not in loop.mmu._code_pages                  # nothing left to watch on page 1
    before = loop.cpu.regs[3]
    loop.run(10)
    assert loop.cpu.regs[3] < before                        # the patched code runs


def test_the_same_code_seen_through_two_code_segments_gets_two_blocks():
    # call next; next: pop ax; jmp $ -> AX is the offset of `next` in CS.
    loop = Loop(bytes.fromhex("e80000") + bytes.fromhex("58") + JMP_SELF)
    loop.run(5)
    assert loop.cpu.regs[0] & 0xFFFF == 0x1003
    cs = loop.cpu.segs[CS]
    cs.base, cs.selector = 0x800, 0x80                      # 0x80:0x800 is the same physical byte
    loop.cpu.rip = 0x800
    loop.run(5)
    assert loop.cpu.regs[0] & 0xFFFF == 0x803
    assert loop.counters.blocks_translated >= 3


def test_clear_drops_everything_and_unwatches():
    loop = Loop(INC_BX + BACK_1)
    loop.run(10)
    loop.cache.clear()
    assert len(loop.cache) == 0 and not loop.mmu._code_pages
