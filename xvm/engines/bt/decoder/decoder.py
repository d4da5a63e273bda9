"""x86 instruction decoder driven by table.py.

`decode(code, bits)` turns the bytes at the start of `code` into an `Instr`
for a CPU whose code segment is 16-, 32- or 64-bit. It applies the legacy
prefix rules (SDM Vol. 2 2.1.1: one per group, the last REP/REPNE and
segment override win; 66 selects the operand size unless it is an SSE
mandatory prefix; F2/F3 win over 66 as mandatory prefixes), REX (2.2.1: only
as the last prefix before the opcode, otherwise ignored; any REX turns byte
registers 4..7 into SPL/BPL/SIL/DIL), ModRM/SIB (16-bit and 32/64-bit forms,
RIP-relative), displacements and immediates, and the 15-byte limit (#GP(0),
SDM Vol. 2 2.3.11). Anything the table lacks, or LOCK on an instruction that
does not allow it, is #UD.

`i286=True` decodes as an 80286 does where it differs from its successors
(80286 PRM): LOCK is accepted on any instruction (it only drives the bus lock
pin), instructions are at most 10 bytes (#GP beyond), and FS/GS do not exist
(MOV to/from Sreg 4 or 5 is #UD).

`code` may be shorter than the instruction (at a page end); the decoder then
raises `NeedMoreBytes` so the caller can fetch across the page and retry:
instruction fetch never touches the next page unless the instruction needs it.
"""

from __future__ import annotations

from typing import Optional

from xvm.engines.bt.decoder.table import TABLE, handler_name
from xvm.engines.bt.faults import GP, UD, GuestFault

MAX_LENGTH = 15
MAX_LENGTH_286 = 10
ES, CS, SS, DS, FS, GS = range(6)
_SEG_PREFIX = {0x26: ES, 0x2E: CS, 0x36: SS, 0x3E: DS, 0x64: FS, 0x65: GS}
#: 16-bit ModRM r/m -> (base, index) registers (SDM Vol. 2 Table 2-1); -1 none.
_MODRM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, -1), (7, -1), (5, -1), (3, -1))

# Operand-spec kinds the decoder cares about for immediates.
_IMM_SIZES = {"Ib": 1, "Ibs": 1, "Iw": 2, "Jb": 1}


#: Operands whose ModRM.reg values are partly undefined, and the valid ones (reg includes REX.R).
_REG_CHECKS = {
    "Sw": lambda reg, long_mode: (reg & 7) < 6,
    "Cy": lambda reg, long_mode: reg in (0, 2, 3, 4) or (reg == 8 and long_mode),
    "Dy": lambda reg, long_mode: reg < 8,
}


def _sreg_destination(reg: int, long_mode: bool) -> bool:
    """MOV Sreg, r/m: CS is not a valid destination (SDM Vol. 2 MOV: #UD)."""
    return (reg & 7) in (0, 2, 3, 4, 5)


class NeedMoreBytes(Exception):
    """The byte source ended inside an instruction."""


class OpDef:
    """One row of the opcode table, compiled for matching and dispatch."""

    __slots__ = ("index", "mnemonics", "mnemonic", "operands", "handler", "fn", "map", "opcode",
                 "plus_r", "has_modrm", "reg", "mod", "modrm_exact", "prefix", "w",
                 "fn_mem", "fn_locked", "i64", "o64", "d64", "f64", "lock", "rep", "by_addr", "specificity",
                 "force_reg", "reg_check")

    def __init__(self, index: int, opcode: str, mnemonic: str, operands: str, attrs: str) -> None:
        self.index = index
        self.mnemonics = tuple(mnemonic.split("/"))
        self.mnemonic = self.mnemonics[0]
        self.operands = tuple(operands.split(",")) if operands else ()
        self.handler = handler_name(mnemonic, operands)
        #: Handlers, bound by cpu.py: for register (or no) ModRM operands, and for memory operands.
        self.fn = None
        self.fn_mem = None
        #: The memory form under the bus lock: LOCK-prefixed instructions and XCHG with memory.
        self.fn_locked = None
        words = opcode.split()
        self.prefix: Optional[int] = None
        if words[0] == "NP":
            self.prefix = 0
            words = words[1:]
        elif words[0] in ("66", "F2", "F3") and len(words) > 1:
            self.prefix = int(words[0], 16)
            words = words[1:]
        self.map = 0
        if words[0] == "0F":
            words = words[1:]
            self.map = 1
            if words[0] in ("38", "3A"):
                self.map = 2 if words[0] == "38" else 3
                words = words[1:]
        op = words[0]
        self.plus_r = op.endswith("+r")
        self.opcode = int(op[:-2] if self.plus_r else op, 16)
        self.has_modrm = False
        self.reg: Optional[int] = None
        self.mod: Optional[str] = None
        self.modrm_exact: Optional[int] = None
        for w in words[1:]:
            if w == "/r":
                self.has_modrm = True
            elif w.startswith("/"):
                self.has_modrm = True
                self.reg = int(w[1:])
            elif w in ("m", "r"):
                self.mod = w
            else:
                self.has_modrm = True
                self.modrm_exact = int(w, 16)
        flags = attrs.split()
        self.i64 = "i64" in flags
        self.o64 = "o64" in flags
        self.d64 = "d64" in flags
        self.f64 = "f64" in flags
        self.lock = "lock" in flags
        self.rep = "rep" in flags
        self.by_addr = "A" in flags
        self.w = 1 if "W1" in flags else 0 if "W0" in flags else None
        self.force_reg = "Ry" in self.operands
        self.reg_check = None
        for spec in self.operands:
            if spec in _REG_CHECKS:
                self.reg_check = _REG_CHECKS[spec]
        if self.operands and self.operands[0] == "Sw":
            self.reg_check = _sreg_destination
        self.specificity = ((self.modrm_exact is not None) * 8 + (self.reg is not None) * 2
                            + (self.mod is not None) + (self.prefix is not None) * 4 + (self.w is not None))

    def __repr__(self) -> str:
        return f"OpDef({self.handler})"


def _build() -> tuple[list[OpDef], list[list[list[OpDef]]]]:
    defs = [OpDef(i, *row) for i, row in enumerate(TABLE)]
    maps: list[list[list[OpDef]]] = [[[] for _ in range(256)] for _ in range(4)]
    for d in defs:
        for r in range(8 if d.plus_r else 1):
            maps[d.map][d.opcode + r].append(d)
    for m in maps:
        for cands in m:
            cands.sort(key=lambda d: -d.specificity)
    return defs, maps


OPDEFS, MAPS = _build()


class Instr:
    """A decoded instruction: everything the executor and disassembler need.

    Memory operand: `base`/`index` are register numbers or -1, `scale` the
    shift count, `disp` sign-extended, `rip_relative` adds the next RIP,
    `seg` the effective segment (override or default), `addr_mask` the
    address-size mask. `reg` is ModRM.reg (+REX.R), `rm` ModRM.rm (+REX.B)
    for register forms or the register from the opcode's low bits (``+r``).
    """

    __slots__ = ("length", "op", "fn", "opsize", "addrsize", "addr_mask", "prefix_66", "seg", "seg_override",
                 "rep", "lock", "rex", "mod", "reg", "rm", "is_mem", "base", "index", "scale", "disp",
                 "rip_relative", "imm", "imm2", "raw", "bits")

    def __init__(self) -> None:
        self.imm = 0
        self.imm2 = 0
        self.base = -1
        self.index = -1
        self.scale = 0
        self.disp = 0
        self.rip_relative = False
        self.is_mem = False
        self.mod = 3
        self.reg = 0
        self.rm = 0

    @property
    def mnemonic(self) -> str:
        """The mnemonic for this operand/address size (`cwde`, `jrcxz`)."""
        names = self.op.mnemonics
        if len(names) == 1:
            return names[0]
        size = self.addrsize if self.op.by_addr else self.opsize
        return names[min({2: 0, 4: 1, 8: 2}[size], len(names) - 1)]

    def __repr__(self) -> str:
        return f"Instr({self.op.handler}, len={self.length})"


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def decode(code: bytes, bits: int, i286: bool = False) -> Instr:
    """Decode one instruction from `code` for a `bits`-bit code segment (an 80286's with `i286`).

    Raises GuestFault(#UD) for invalid encodings, GuestFault(#GP(0)) when the
    instruction would exceed 15 bytes, NeedMoreBytes when `code` ends early.
    """
    n = len(code)
    pos = 0
    opsize_prefix = False
    addr_prefix = False
    seg_override = -1
    rep = 0
    lock = False
    rex = 0
    long_mode = bits == 64
    try:
        while True:
            if pos >= MAX_LENGTH:
                raise GuestFault(GP, 0)
            b = code[pos]
            if b == 0x66:
                opsize_prefix = True
            elif b == 0x67:
                addr_prefix = True
            elif b in _SEG_PREFIX:
                if not long_mode or b >= 0x64:
                    seg_override = _SEG_PREFIX[b]  # 64-bit mode ignores ES/CS/SS/DS overrides (SDM Vol. 1 3.3.7.1)
            elif b == 0xF0:
                lock = True
            elif b == 0xF2 or b == 0xF3:
                rep = b
            elif long_mode and 0x40 <= b <= 0x4F:
                rex = b
                pos += 1
                if pos >= MAX_LENGTH:
                    raise GuestFault(GP, 0)
                b = code[pos]
                if b in _SEG_PREFIX or b in (0x66, 0x67, 0xF0, 0xF2, 0xF3) or 0x40 <= b <= 0x4F:
                    rex = 0  # a REX followed by another prefix is ignored (SDM Vol. 2 2.2.1)
                    continue
                break
            else:
                break
            pos += 1
        opmap = 0
        b = code[pos]
        pos += 1
        if b == 0x0F:
            opmap = 1
            b = code[pos]
            pos += 1
            if b == 0x38 or b == 0x3A:
                opmap = 2 if b == 0x38 else 3
                b = code[pos]
                pos += 1
        cands = MAPS[opmap][b]
        if not cands:
            raise GuestFault(UD)
        modrm = -1
        if cands[0].has_modrm:
            modrm = code[pos]
            pos += 1
        mandatory = rep if rep else (0x66 if opsize_prefix else 0)
        rexw = (rex >> 3) & 1
        op = None
        for d in cands:
            if d.prefix is not None and d.prefix != mandatory:
                continue
            if (d.i64 and long_mode) or (d.o64 and not long_mode):
                continue
            if d.w is not None and d.w != rexw:
                continue
            if modrm >= 0:
                if d.modrm_exact is not None and d.modrm_exact != modrm:
                    continue
                if d.reg is not None and d.reg != (modrm >> 3) & 7:
                    continue
                if d.mod is not None and (d.mod == "r") != (modrm >= 0xC0):
                    continue
            if b == 0x90 and opmap == 0 and d.prefix is None and not d.plus_r and rex & 1:
                continue  # 90 with REX.B is XCHG r8,rAX, not NOP (F3 90 stays PAUSE)
            op = d
            break
        if op is None:
            raise GuestFault(UD)
        if op.prefix == 0x66:
            opsize_prefix = False

        ins = Instr()
        ins.op = op
        ins.fn = op.fn
        ins.bits = bits
        ins.rex = rex
        ins.rep = rep
        ins.lock = lock
        ins.seg_override = seg_override
        ins.prefix_66 = opsize_prefix
        if long_mode:
            if rexw or op.f64:
                opsize = 8
            elif op.d64:
                opsize = 2 if opsize_prefix else 8
            else:
                opsize = 2 if opsize_prefix else 4
            addrsize = 4 if addr_prefix else 8
        else:
            default = 4 if bits == 32 else 2
            opsize = (6 - default) if opsize_prefix else default
            addrsize = (6 - default) if addr_prefix else default
        ins.opsize = opsize
        ins.addrsize = addrsize
        ins.addr_mask = (1 << (addrsize * 8)) - 1
        seg = DS
        if modrm >= 0:
            mod = 3 if op.force_reg else modrm >> 6  # MOV CR/DR ignore ModRM.mod (SDM Vol. 2 MOV-Control Registers)
            ins.mod = mod
            ins.reg = ((modrm >> 3) & 7) | ((rex & 4) << 1)
            rm = modrm & 7
            if mod == 3:
                ins.rm = rm | ((rex & 1) << 3)
            else:
                ins.is_mem = True
                if addrsize == 2:
                    base, index = _MODRM16[rm]
                    if mod == 0 and rm == 6:
                        base = -1
                        ins.disp = _signed(code[pos] | code[pos + 1] << 8, 16)
                        pos += 2
                    elif base == 5:
                        seg = SS
                    ins.base = base
                    ins.index = index
                    if mod == 1:
                        ins.disp = _signed(code[pos], 8)
                        pos += 1
                    elif mod == 2:
                        ins.disp = _signed(code[pos] | code[pos + 1] << 8, 16)
                        pos += 2
                else:
                    disp32 = mod == 2
                    if rm == 4:
                        sib = code[pos]
                        pos += 1
                        ins.scale = sib >> 6
                        index = ((sib >> 3) & 7) | ((rex & 2) << 2)
                        ins.index = -1 if index == 4 else index
                        base = sib & 7
                        if base == 5 and mod == 0:
                            ins.base = -1
                            disp32 = True
                        else:
                            ins.base = base | ((rex & 1) << 3)
                            if ins.base == 4 or ins.base == 5:
                                seg = SS
                    elif rm == 5 and mod == 0:
                        disp32 = True
                        ins.rip_relative = long_mode
                    else:
                        ins.base = rm | ((rex & 1) << 3)
                        if ins.base == 5:
                            seg = SS
                    if disp32:
                        ins.disp = _signed(int.from_bytes(code[pos:pos + 4], "little"), 32)
                        if pos + 4 > n:
                            raise IndexError
                        pos += 4
                    elif mod == 1:
                        ins.disp = _signed(code[pos], 8)
                        pos += 1
            if ins.is_mem:
                ins.fn = op.fn_locked if (lock and op.lock) or op.mnemonic == "xchg" else op.fn_mem
            elif op.mod == "m":
                raise GuestFault(UD)
            if op.reg_check is not None and not op.reg_check(ins.reg, long_mode):
                raise GuestFault(UD)
            if i286 and "Sw" in op.operands and ins.reg > 3:
                raise GuestFault(UD)  # no FS/GS on a 286
        elif op.plus_r:
            ins.rm = (b & 7) | ((rex & 1) << 3)
        if lock and (not op.lock or not ins.is_mem) and not i286:
            raise GuestFault(UD)
        ins.seg = seg if seg_override < 0 else seg_override
        for spec in op.operands:
            if spec[0] not in "IJ" and spec not in ("Ap", "Ob", "Ov"):
                continue
            if spec in _IMM_SIZES:
                size = _IMM_SIZES[spec]
            elif spec == "Iz" or spec == "Jz":
                size = 2 if opsize == 2 else 4
            elif spec == "Iv":
                size = opsize
            elif spec == "Ap":
                size = opsize + 2
            else:  # Ob / Ov: moffs of the address size
                size = addrsize
            if pos + size > n:
                raise IndexError
            value = int.from_bytes(code[pos:pos + size], "little")
            pos += size
            if spec == "Ap":
                ins.imm = value & ((1 << (opsize * 8)) - 1)
                ins.imm2 = value >> (opsize * 8)
            elif op.mnemonic == "enter" and spec == "Ib":
                ins.imm2 = value
            elif spec in ("Ibs", "Jb", "Jz") or (spec == "Iz" and opsize == 8):
                ins.imm = _signed(value, size * 8)
            else:
                ins.imm = value
        if pos > (MAX_LENGTH_286 if i286 else MAX_LENGTH):
            raise GuestFault(GP, 0)
    except IndexError:
        if n >= MAX_LENGTH:
            raise GuestFault(GP, 0) from None
        raise NeedMoreBytes() from None
    ins.length = pos
    ins.raw = bytes(code[:pos])
    return ins
