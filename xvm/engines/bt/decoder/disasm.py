"""Intel-syntax disassembly of decoded instructions, from the same table.

`operands(ins, next_rip)` gives each operand as a tuple — ("reg", name),
("mem", size, segment, base, index, scale, disp), ("imm", value),
("far", selector, offset) — which `format_instr` prints and the differential
test compares with iced-x86. Numbers are printed the MASM way iced uses
(`0Eh`, `0FFFFh`).
"""

from __future__ import annotations

from xvm.engines.bt.decoder.decoder import Instr

_R8_LEGACY = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
_R8_REX = ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil") + tuple(f"r{i}b" for i in range(8, 16))
_R16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di") + tuple(f"r{i}w" for i in range(8, 16))
_R32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi") + tuple(f"r{i}d" for i in range(8, 16))
_R64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi") + tuple(f"r{i}" for i in range(8, 16))
SREGS = ("es", "cs", "ss", "ds", "fs", "gs")
_SIZE_NAMES = {1: "byte", 2: "word", 4: "dword", 6: "fword", 8: "qword", 10: "tbyte", 16: "xmmword"}
_FIXED_SREG = {"ES": 0, "CS": 1, "SS": 2, "DS": 3, "FS": 4, "GS": 5}
#: Instructions whose 16-bit r/m operand names a register of the operand size in register form.
_EW_REGISTER_OPSIZE = frozenset(("mov", "sldt", "str", "lldt", "ltr", "verr", "verw", "smsw", "lmsw", "lar", "lsl",
                                 "arpl"))
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


def reg_name(r: int, size: int, rex: int = 0) -> str:
    if size == 1:
        return _R8_REX[r] if rex else _R8_LEGACY[r]
    return (_R16, _R32, _R64)[{2: 0, 4: 1, 8: 2}[size]][r]


def _addr_reg(r: int, addrsize: int) -> str:
    return reg_name(r, addrsize)


def _operand_size(spec: str, ins: Instr) -> int:
    """Size in bytes of operand `spec` (E/G/M... with a size suffix)."""
    suffix = spec[1:]
    if suffix == "b":
        return 1
    if suffix == "w":
        return 2
    if suffix == "d":
        return 4
    if suffix == "q":
        return 8
    if suffix == "dq" or suffix == "x":
        return 16
    if suffix == "y":
        return 8 if ins.rex & 8 or (spec[0] in "RCD" and ins.bits == 64) else 4
    if suffix == "z":
        return 2 if ins.opsize == 2 else 4
    if suffix == "p":
        return ins.opsize + 2
    if suffix == "s":
        return 10 if ins.bits == 64 else 6
    if suffix == "a":
        return ins.opsize * 2
    if suffix == "t":
        return 10
    if suffix == "e":
        return 14 if ins.opsize == 2 else 28
    return ins.opsize


def _memory(ins: Instr, size: int, next_rip: int) -> tuple:
    if ins.rip_relative:
        target = (next_rip + ins.disp) & _MASKS[ins.addrsize]
        return ("mem", size, ins.seg, "rip" if ins.addrsize == 8 else "eip", None, 1, target)
    base = _addr_reg(ins.base, ins.addrsize) if ins.base >= 0 else None
    index = _addr_reg(ins.index, ins.addrsize) if ins.index >= 0 else None
    return ("mem", size, ins.seg, base, index, 1 << ins.scale if index else 1, ins.disp & _MASKS[ins.addrsize])


def operands(ins: Instr, next_rip: int) -> list[tuple]:
    """The operands of `ins` in Intel order, in the tuple form described above."""
    out: list[tuple] = []
    opsize = ins.opsize
    for spec in ins.op.operands:
        kind = spec[0]
        if spec in ("AL", "CL", "DX", "AX"):
            out.append(("reg", spec.lower()))
        elif spec == "rAX":
            out.append(("reg", reg_name(0, opsize)))
        elif spec == "eAX":
            out.append(("reg", reg_name(0, min(opsize, 4))))
        elif spec == "1":
            out.append(("imm", 1))
        elif spec == "ST0":
            out.append(("reg", "st0"))
        elif spec == "STi":
            out.append(("reg", f"st{ins.rm & 7}"))
        elif spec in _FIXED_SREG:
            out.append(("reg", spec.lower()))
        elif kind in "EMWRUQN":
            size = _operand_size(spec, ins)
            if spec == "M" or (spec == "Mb" and ins.op.mnemonic != "invlpg"):
                size = 0 if spec == "M" else 1
            if ins.is_mem:
                out.append(_memory(ins, size, next_rip))
            elif kind in "WU" or spec.endswith("x"):
                out.append(("reg", f"xmm{ins.rm}"))
            elif kind in "QN":
                out.append(("reg", f"mm{ins.rm & 7}"))  # MMX registers ignore REX.B
            else:
                if spec == "Ew" and ins.op.mnemonic in _EW_REGISTER_OPSIZE:
                    size = opsize  # register forms take the operand size
                elif ins.op.mnemonic == "pinsrw":
                    size = 8 if ins.rex & 8 else 4  # PINSRW xmm, r32/m16
                out.append(("reg", reg_name(ins.rm, size, ins.rex)))
        elif kind == "G":
            size = opsize if ins.op.mnemonic == "arpl" else _operand_size(spec, ins)  # iced: ARPL r/m16, r32
            out.append(("reg", reg_name(ins.reg, size, ins.rex)))
        elif kind == "V":
            out.append(("reg", f"xmm{ins.reg}"))
        elif kind == "P":
            out.append(("reg", f"mm{ins.reg & 7}"))
        elif kind == "Z":
            out.append(("reg", reg_name(ins.rm, _operand_size(spec, ins), ins.rex)))
        elif kind == "S":
            out.append(("reg", SREGS[ins.reg & 7] if ins.reg & 7 < 6 else f"sr{ins.reg & 7}"))
        elif kind == "C":
            out.append(("reg", f"cr{ins.reg}"))
        elif kind == "D":
            out.append(("reg", f"dr{ins.reg}"))
        elif kind == "I":
            if spec == "Ibs" or (spec == "Iz" and opsize == 8):
                out.append(("imm", ins.imm & _MASKS[opsize]))
            elif spec == "Ib" and ins.op.mnemonic == "enter":
                out.append(("imm", ins.imm2))
            else:
                out.append(("imm", ins.imm))
        elif kind == "J":
            mask = 0xFFFFFFFFFFFFFFFF if ins.bits == 64 else _MASKS[opsize]
            out.append(("imm", (next_rip + ins.imm) & mask))
        elif kind == "A":
            out.append(("far", ins.imm2, ins.imm))
        elif kind == "O":
            size = 1 if "AL" in ins.op.operands else opsize
            out.append(("mem", size, ins.seg, None, None, 1, ins.imm))
        elif kind == "B":  # BD: DS:rDI, segment override allowed
            size = 8 if spec == "BDq" else 16
            out.append(("mem", size, ins.seg, _addr_reg(7, ins.addrsize), None, 1, 0))
        elif kind in "XY":
            size = _operand_size(spec, ins)
            index = 6 if kind == "X" else 7
            out.append(("mem", size, ins.seg if kind == "X" else 0, _addr_reg(index, ins.addrsize), None, 1, 0))
        else:
            raise ValueError(f"operand spec {spec} has no disassembly")
    return out


def hex_number(value: int) -> str:
    """MASM-style hex: 0Eh, 1234h, 0FFFFh (a leading 0 when the first digit is a letter)."""
    if value < 10:
        return str(value)
    text = f"{value:X}"
    return ("0" + text if text[0] in "ABCDEF" else text) + "h"


def _format(op: tuple) -> str:
    if op[0] == "reg":
        return op[1]
    if op[0] == "imm":
        return hex_number(op[1])
    if op[0] == "far":
        return f"{hex_number(op[1])}:{hex_number(op[2])}"
    _, size, seg, base, index, scale, disp = op
    parts = []
    if base:
        parts.append(base)
    if index:
        parts.append(index if scale == 1 else f"{index}*{scale}")
    text = "+".join(parts)
    if disp or not parts:
        text = f"{text}+{hex_number(disp)}" if parts else hex_number(disp)
    prefix = f"{_SIZE_NAMES[size]} ptr " if size in _SIZE_NAMES else ""
    return f"{prefix}{SREGS[seg]}:[{text}]"


def format_instr(ins: Instr, next_rip: int) -> str:
    """One line of Intel syntax: prefixes, mnemonic, operands."""
    words = []
    if ins.lock:
        words.append("lock")
    if ins.rep and ins.op.rep:
        words.append("repne" if ins.rep == 0xF2 else ("repe" if ins.op.mnemonic[:4] in ("cmps", "scas") else "rep"))
    words.append(ins.mnemonic)
    text = " ".join(words)
    ops = operands(ins, next_rip)
    if ops:
        text += " " + ",".join(_format(o) for o in ops)
    return text
