"""THE opcode table of the bt engine: one row per instruction form.

Decoding, disassembly, execution dispatch and test generation all read this
table (STYLE.md 9; models: Bochs `cpu/decoder/ia_opcodes.def`, v86
`gen/x86_table.js`). Each row is ``(opcode, mnemonic, operands, attrs)``:

opcode
    Hex bytes as in the SDM opcode column. ``/r`` means a ModRM byte follows,
    ``/0``..``/7`` a ModRM byte whose reg field selects the row, ``+r`` the
    register in the low three opcode bits. A leading ``66``/``F2``/``F3``/``NP``
    is a mandatory prefix (``NP``: none of them). A trailing ``m`` or ``r``
    restricts the row to memory (mod != 3) or register (mod == 3) forms; a
    third byte after ``0F 01`` is a whole ModRM byte (``0F 01 F8`` SWAPGS).
mnemonic
    Intel mnemonic; ``a/b/c`` picks by operand size 16/32/64 (``cbw/cwde/cdqe``)
    and ``a/b/c`` with the ``A`` attribute picks by address size (JCXZ).
operands
    SDM Appendix A notation: E (ModRM r/m), G (ModRM reg), M (memory only),
    R (register only), I (immediate, ``Ibs`` sign-extended), J (relative),
    A (far pointer), O (moffs), S (segment register), C/D (control/debug
    register), Z (register in the opcode's low bits), X/Y (string source
    DS:rSI / destination ES:rDI), BD (DS:rDI, MASKMOVQ's and MASKMOVDQU's destination),
    V/W/U (xmm reg / xmm or memory / xmm reg only), P/Q/N (mm reg / mm or memory / mm reg only);
    size suffixes b w d q v (16/32/64 by operand size) z (16/32) y (32/64)
    p (far pointer) s (descriptor-table pseudo-descriptor) dq (16 bytes)
    t (80-bit real) e (x87 environment). Fixed operands are register names
    (AL, rAX, DX, CL, ST0; STi is the x87 register ModRM.rm names) or ``1``.
attrs
    ``i64`` invalid in 64-bit mode, ``o64`` valid only in 64-bit mode, ``d64``
    64-bit default operand size in 64-bit mode, ``f64`` operand size forced to
    64 bits there (near branches), ``lock`` LOCK allowed (with a memory
    destination), ``rep`` REP prefixes meaningful, ``W1``/``W0`` REX.W must be
    set/clear, ``A`` the mnemonic choice follows the address size.

The handler name of a row is ``<mnemonic>_<operands>`` (``add_Eb_Gb``), the
first alternative of a sized mnemonic, operands joined by ``_``. Anything not
in this table is #UD.
"""

from __future__ import annotations

ALU_OPS = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")
SHIFT_OPS = ("rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar")
#: Packed-integer ops with an MMX form (NP 0F xx /r: Pq,Qq) and an SSE2 form (66 0F xx /r: Vx,Wx), except
#: XMM_ONLY: opcode, mnemonic.
PACKED_INT_OPS = (
    ("60", "punpcklbw"), ("61", "punpcklwd"), ("62", "punpckldq"), ("6C", "punpcklqdq"),
    ("68", "punpckhbw"), ("69", "punpckhwd"), ("6A", "punpckhdq"), ("6D", "punpckhqdq"),
    ("63", "packsswb"), ("67", "packuswb"), ("6B", "packssdw"),
    ("64", "pcmpgtb"), ("65", "pcmpgtw"), ("66", "pcmpgtd"), ("74", "pcmpeqb"), ("75", "pcmpeqw"), ("76", "pcmpeqd"),
    ("FC", "paddb"), ("FD", "paddw"), ("FE", "paddd"), ("D4", "paddq"),
    ("F8", "psubb"), ("F9", "psubw"), ("FA", "psubd"), ("FB", "psubq"),
    ("DA", "pminub"), ("DE", "pmaxub"), ("EA", "pminsw"), ("EE", "pmaxsw"),
    ("DB", "pand"), ("DF", "pandn"), ("EB", "por"), ("EF", "pxor"),
    ("D1", "psrlw"), ("D2", "psrld"), ("D3", "psrlq"), ("E1", "psraw"), ("E2", "psrad"),
    ("F1", "psllw"), ("F2", "pslld"), ("F3", "psllq"), ("F4", "pmuludq"),
    ("EC", "paddsb"), ("ED", "paddsw"), ("DC", "paddusb"), ("DD", "paddusw"),
    ("E8", "psubsb"), ("E9", "psubsw"), ("D8", "psubusb"), ("D9", "psubusw"),
    ("D5", "pmullw"), ("E5", "pmulhw"), ("E4", "pmulhuw"), ("F5", "pmaddwd"),
    ("E0", "pavgb"), ("E3", "pavgw"), ("F6", "psadbw"),
)
XMM_ONLY = frozenset(("punpcklqdq", "punpckhqdq", "psrldq", "pslldq"))
#: Shifts by an immediate (NP/66 0F 71/72/73 /digit ib, register operand only).
PACKED_SHIFT_IMM = (
    ("71", 2, "psrlw"), ("71", 4, "psraw"), ("71", 6, "psllw"),
    ("72", 2, "psrld"), ("72", 4, "psrad"), ("72", 6, "pslld"),
    ("73", 2, "psrlq"), ("73", 3, "psrldq"), ("73", 6, "psllq"), ("73", 7, "pslldq"),
)
#: Scalar floating point (F2 = double "sd", F3 = single "ss"): opcode, mnemonic stem.
SCALAR_FP_OPS = (("51", "sqrt"), ("58", "add"), ("59", "mul"), ("5C", "sub"), ("5D", "min"), ("5E", "div"),
                 ("5F", "max"))
#: Condition-code suffixes in encoding order (SDM Vol. 1 B.1).
CC_NAMES = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")


def _rows() -> list[tuple[str, str, str, str]]:
    t: list[tuple[str, str, str, str]] = []
    add = t.append
    # --- one-byte map: ALU block 00..3F ---
    for n, op in enumerate(ALU_OPS):
        b = n * 8
        lock = "" if op == "cmp" else "lock"
        add((f"{b:02X} /r", op, "Eb,Gb", lock))
        add((f"{b + 1:02X} /r", op, "Ev,Gv", lock))
        add((f"{b + 2:02X} /r", op, "Gb,Eb", ""))
        add((f"{b + 3:02X} /r", op, "Gv,Ev", ""))
        add((f"{b + 4:02X}", op, "AL,Ib", ""))
        add((f"{b + 5:02X}", op, "rAX,Iz", ""))
        add((f"80 /{n}", op, "Eb,Ib", lock))
        add((f"81 /{n}", op, "Ev,Iz", lock))
        add((f"82 /{n}", op, "Eb,Ib", lock + " i64"))
        add((f"83 /{n}", op, "Ev,Ibs", lock))
    for sreg, push, pop in (("ES", "06", "07"), ("CS", "0E", ""), ("SS", "16", "17"), ("DS", "1E", "1F")):
        add((push, "push", sreg, "i64"))
        if pop:
            add((pop, "pop", sreg, "i64"))
    add(("27", "daa", "", "i64"))
    add(("2F", "das", "", "i64"))
    add(("37", "aaa", "", "i64"))
    add(("3F", "aas", "", "i64"))
    add(("40+r", "inc", "Zv", "i64"))
    add(("48+r", "dec", "Zv", "i64"))
    add(("50+r", "push", "Zv", "d64"))
    add(("58+r", "pop", "Zv", "d64"))
    add(("60", "pusha/pushad", "", "i64"))
    add(("61", "popa/popad", "", "i64"))
    add(("62 /r m", "bound", "Gv,Ma", "i64"))
    add(("63 /r", "arpl", "Ew,Gw", "i64"))
    add(("63 /r", "movsxd", "Gv,Ez", "o64"))
    add(("68", "push", "Iz", "d64"))
    add(("69 /r", "imul", "Gv,Ev,Iz", ""))
    add(("6A", "push", "Ibs", "d64"))
    add(("6B /r", "imul", "Gv,Ev,Ibs", ""))
    add(("6C", "insb", "Yb,DX", "rep"))
    add(("6D", "insw/insd/insd", "Yz,DX", "rep"))
    add(("6E", "outsb", "DX,Xb", "rep"))
    add(("6F", "outsw/outsd/outsd", "DX,Xz", "rep"))
    for cc, name in enumerate(CC_NAMES):
        add((f"{0x70 + cc:02X}", "j" + name, "Jb", "f64"))
    add(("84 /r", "test", "Eb,Gb", ""))
    add(("85 /r", "test", "Ev,Gv", ""))
    add(("86 /r", "xchg", "Eb,Gb", "lock"))
    add(("87 /r", "xchg", "Ev,Gv", "lock"))
    add(("88 /r", "mov", "Eb,Gb", ""))
    add(("89 /r", "mov", "Ev,Gv", ""))
    add(("8A /r", "mov", "Gb,Eb", ""))
    add(("8B /r", "mov", "Gv,Ev", ""))
    add(("8C /r", "mov", "Ev,Sw", ""))
    add(("8D /r m", "lea", "Gv,M", ""))
    add(("8E /r", "mov", "Sw,Ew", ""))
    add(("8F /0", "pop", "Ev", "d64"))
    add(("F3 90", "pause", "", ""))
    add(("90", "nop", "", ""))
    add(("90+r", "xchg", "Zv,rAX", ""))
    add(("98", "cbw/cwde/cdqe", "", ""))
    add(("99", "cwd/cdq/cqo", "", ""))
    add(("9A", "call", "Ap", "i64"))
    add(("9B", "wait", "", ""))
    add(("9C", "pushf/pushfd/pushfq", "", "d64"))
    add(("9D", "popf/popfd/popfq", "", "d64"))
    add(("9E", "sahf", "", ""))
    add(("9F", "lahf", "", ""))
    add(("A0", "mov", "AL,Ob", ""))
    add(("A1", "mov", "rAX,Ov", ""))
    add(("A2", "mov", "Ob,AL", ""))
    add(("A3", "mov", "Ov,rAX", ""))
    add(("A4", "movsb", "Yb,Xb", "rep"))
    add(("A5", "movsw/movsd/movsq", "Yv,Xv", "rep"))
    add(("A6", "cmpsb", "Xb,Yb", "rep"))
    add(("A7", "cmpsw/cmpsd/cmpsq", "Xv,Yv", "rep"))
    add(("A8", "test", "AL,Ib", ""))
    add(("A9", "test", "rAX,Iz", ""))
    add(("AA", "stosb", "Yb,AL", "rep"))
    add(("AB", "stosw/stosd/stosq", "Yv,rAX", "rep"))
    add(("AC", "lodsb", "AL,Xb", "rep"))
    add(("AD", "lodsw/lodsd/lodsq", "rAX,Xv", "rep"))
    add(("AE", "scasb", "AL,Yb", "rep"))
    add(("AF", "scasw/scasd/scasq", "rAX,Yv", "rep"))
    add(("B0+r", "mov", "Zb,Ib", ""))
    add(("B8+r", "mov", "Zv,Iv", ""))
    for n, op in enumerate(SHIFT_OPS):
        add((f"C0 /{n}", op, "Eb,Ib", ""))
        add((f"C1 /{n}", op, "Ev,Ib", ""))
        add((f"D0 /{n}", op, "Eb,1", ""))
        add((f"D1 /{n}", op, "Ev,1", ""))
        add((f"D2 /{n}", op, "Eb,CL", ""))
        add((f"D3 /{n}", op, "Ev,CL", ""))
    add(("C2", "ret", "Iw", "f64"))
    add(("C3", "ret", "", "f64"))
    add(("C4 /r m", "les", "Gz,Mp", "i64"))
    add(("C5 /r m", "lds", "Gz,Mp", "i64"))
    add(("C6 /0", "mov", "Eb,Ib", ""))
    add(("C7 /0", "mov", "Ev,Iz", ""))
    add(("C8", "enter", "Iw,Ib", "d64"))
    add(("C9", "leave", "", "d64"))
    add(("CA", "retf", "Iw", ""))
    add(("CB", "retf", "", ""))
    add(("CC", "int3", "", ""))
    add(("CD", "int", "Ib", ""))
    add(("CE", "into", "", "i64"))
    add(("CF", "iret/iretd/iretq", "", ""))
    add(("D4", "aam", "Ib", "i64"))
    add(("D5", "aad", "Ib", "i64"))
    add(("D6", "salc", "", "i64"))
    add(("D7", "xlatb", "", ""))
    add(("E0", "loopne", "Jb", "f64"))
    add(("E1", "loope", "Jb", "f64"))
    add(("E2", "loop", "Jb", "f64"))
    add(("E3", "jcxz/jecxz/jrcxz", "Jb", "f64 A"))
    add(("E4", "in", "AL,Ib", ""))
    add(("E5", "in", "eAX,Ib", ""))
    add(("E6", "out", "Ib,AL", ""))
    add(("E7", "out", "Ib,eAX", ""))
    add(("E8", "call", "Jz", "f64"))
    add(("E9", "jmp", "Jz", "f64"))
    add(("EA", "jmp", "Ap", "i64"))
    add(("EB", "jmp", "Jb", "f64"))
    add(("EC", "in", "AL,DX", ""))
    add(("ED", "in", "eAX,DX", ""))
    add(("EE", "out", "DX,AL", ""))
    add(("EF", "out", "DX,eAX", ""))
    add(("F1", "int1", "", ""))
    add(("F4", "hlt", "", ""))
    add(("F5", "cmc", "", ""))
    for size, imm in (("b", "Ib"), ("v", "Iz")):
        opc = "F6" if size == "b" else "F7"
        add((f"{opc} /0", "test", f"E{size},{imm}", ""))
        add((f"{opc} /1", "test", f"E{size},{imm}", ""))
        add((f"{opc} /2", "not", f"E{size}", "lock"))
        add((f"{opc} /3", "neg", f"E{size}", "lock"))
        add((f"{opc} /4", "mul", f"E{size}", ""))
        add((f"{opc} /5", "imul", f"E{size}", ""))
        add((f"{opc} /6", "div", f"E{size}", ""))
        add((f"{opc} /7", "idiv", f"E{size}", ""))
    add(("F8", "clc", "", ""))
    add(("F9", "stc", "", ""))
    add(("FA", "cli", "", ""))
    add(("FB", "sti", "", ""))
    add(("FC", "cld", "", ""))
    add(("FD", "std", "", ""))
    add(("FE /0", "inc", "Eb", "lock"))
    add(("FE /1", "dec", "Eb", "lock"))
    add(("FF /0", "inc", "Ev", "lock"))
    add(("FF /1", "dec", "Ev", "lock"))
    add(("FF /2", "call", "Ev", "f64"))
    add(("FF /3 m", "call", "Mp", ""))
    add(("FF /4", "jmp", "Ev", "f64"))
    add(("FF /5 m", "jmp", "Mp", ""))
    add(("FF /6", "push", "Ev", "d64"))
    # --- x87 (SDM Vol. 1 ch. 8): loads/stores, arithmetic, compares, control. ST0 is the stack top,
    # STi the register ModRM.rm names; memory operands Md/Mq/Mt are 32/64/80-bit reals (integers for FI*),
    # Mw 16-bit, Me the 14/28-byte environment. ---
    arith = ("fadd", "fmul", "fcom", "fcomp", "fsub", "fsubr", "fdiv", "fdivr")
    for digit, name in enumerate(arith):
        add((f"D8 /{digit} m", name, "Md", ""))
        add((f"D8 /{digit} r", name, "ST0,STi", ""))
        add((f"DC /{digit} m", name, "Mq", ""))
        add((f"DA /{digit} m", "fi" + name[1:], "Md", ""))
        add((f"DE /{digit} m", "fi" + name[1:], "Mw", ""))
    # DC and DE register forms write ST(i); their SUB/DIV halves are swapped relative to D8 (SDM Vol. 2 FSUB).
    for digit, name in ((0, "fadd"), (1, "fmul"), (4, "fsubr"), (5, "fsub"), (6, "fdivr"), (7, "fdiv")):
        add((f"DC /{digit} r", name, "STi,ST0", ""))
        add((f"DE /{digit} r", name + "p", "STi,ST0", ""))
    add(("DE D9", "fcompp", "", ""))
    # Undocumented aliases every x87 since the 8087 decodes (FCOM/FCOMP/FXCH/FSTP in other groups).
    add(("DC /2 r", "fcom", "ST0,STi", ""))
    add(("DC /3 r", "fcomp", "ST0,STi", ""))
    add(("DE /2 r", "fcomp", "ST0,STi", ""))
    add(("DD /1 r", "fxch", "ST0,STi", ""))
    add(("DF /1 r", "fxch", "ST0,STi", ""))
    add(("DF /2 r", "fstp", "STi", ""))
    add(("DF /3 r", "fstp", "STi", ""))
    add(("DA E9", "fucompp", "", ""))
    add(("D9 /0 m", "fld", "Md", ""))
    add(("D9 /2 m", "fst", "Md", ""))
    add(("D9 /3 m", "fstp", "Md", ""))
    add(("D9 /4 m", "fldenv", "Me", ""))
    add(("D9 /5 m", "fldcw", "Mw", ""))
    add(("D9 /6 m", "fnstenv", "Me", ""))
    add(("D9 /7 m", "fnstcw", "Mw", ""))
    add(("D9 /0 r", "fld", "STi", ""))
    add(("D9 /1 r", "fxch", "ST0,STi", ""))
    add(("D9 D0", "fnop", "", ""))
    for modrm, name in (("E0", "fchs"), ("E1", "fabs"), ("E4", "ftst"), ("E5", "fxam"), ("E8", "fld1"),
                        ("E9", "fldl2t"), ("EA", "fldl2e"), ("EB", "fldpi"), ("EC", "fldlg2"), ("ED", "fldln2"),
                        ("EE", "fldz"), ("F6", "fdecstp"), ("F7", "fincstp"), ("FA", "fsqrt"), ("FC", "frndint")):
        add((f"D9 {modrm}", name, "", ""))
    add(("DB /0 m", "fild", "Md", ""))
    add(("DB /1 m", "fisttp", "Md", ""))
    add(("DB /2 m", "fist", "Md", ""))
    add(("DB /3 m", "fistp", "Md", ""))
    add(("DB /5 m", "fld", "Mt", ""))
    add(("DB /7 m", "fstp", "Mt", ""))
    add(("DB E2", "fnclex", "", ""))
    add(("DB E3", "fninit", "", ""))
    add(("DB /5 r", "fucomi", "ST0,STi", ""))
    add(("DB /6 r", "fcomi", "ST0,STi", ""))
    add(("DD /0 m", "fld", "Mq", ""))
    add(("DD /1 m", "fisttp", "Mq", ""))
    add(("DD /2 m", "fst", "Mq", ""))
    add(("DD /3 m", "fstp", "Mq", ""))
    add(("DD /7 m", "fnstsw", "Mw", ""))
    add(("DD /0 r", "ffree", "STi", ""))
    add(("DD /2 r", "fst", "STi", ""))
    add(("DD /3 r", "fstp", "STi", ""))
    add(("DD /4 r", "fucom", "ST0,STi", ""))
    add(("DD /5 r", "fucomp", "ST0,STi", ""))
    add(("DF /0 m", "fild", "Mw", ""))
    add(("DF /1 m", "fisttp", "Mw", ""))
    add(("DF /2 m", "fist", "Mw", ""))
    add(("DF /3 m", "fistp", "Mw", ""))
    add(("DF /5 m", "fild", "Mq", ""))
    add(("DF /7 m", "fistp", "Mq", ""))
    add(("DF E0", "fnstsw", "AX", ""))
    add(("DF /5 r", "fucomip", "ST0,STi", ""))
    add(("DF /6 r", "fcomip", "ST0,STi", ""))
    # --- two-byte map 0F ---
    add(("0F 00 /0", "sldt", "Ew", ""))
    add(("0F 00 /1", "str", "Ew", ""))
    add(("0F 00 /2", "lldt", "Ew", ""))
    add(("0F 00 /3", "ltr", "Ew", ""))
    add(("0F 00 /4", "verr", "Ew", ""))
    add(("0F 00 /5", "verw", "Ew", ""))
    add(("0F 01 /0 m", "sgdt", "Ms", ""))
    add(("0F 01 /1 m", "sidt", "Ms", ""))
    add(("0F 01 /2 m", "lgdt", "Ms", ""))
    add(("0F 01 /3 m", "lidt", "Ms", ""))
    add(("0F 01 /4", "smsw", "Ew", ""))
    add(("0F 01 /6", "lmsw", "Ew", ""))
    add(("0F 01 /7 m", "invlpg", "Mb", ""))
    add(("0F 01 F8", "swapgs", "", "o64"))
    add(("0F 01 F9", "rdtscp", "", ""))
    add(("0F 02 /r", "lar", "Gv,Ew", ""))
    add(("0F 03 /r", "lsl", "Gv,Ew", ""))
    add(("0F 05", "syscall", "", ""))
    add(("0F 06", "clts", "", ""))
    add(("0F 07", "sysret/sysret/sysretq", "", ""))
    add(("0F 08", "invd", "", ""))
    add(("0F 09", "wbinvd", "", ""))
    add(("0F 0B", "ud2", "", ""))
    add(("0F FF /r", "ud0", "Gv,Ev", ""))
    for digit in range(8):
        name = {1: "prefetchw", 2: "prefetchwt1", 3: "prefetchw"}.get(digit, "prefetch")
        add((f"0F 0D /{digit} m", name, "Mb", ""))
    add(("0F 18 /0 m", "prefetchnta", "Mb", ""))
    add(("0F 18 /1 m", "prefetcht0", "Mb", ""))
    add(("0F 18 /2 m", "prefetcht1", "Mb", ""))
    add(("0F 18 /3 m", "prefetcht2", "Mb", ""))
    # The reserved-NOP space (SDM Vol. 2 NOP, Table 4-12 "hint" opcodes): CET's ENDBR64/ENDBR32 and RDSSP live
    # here and execute as NOPs on a CPU without CET, which is how CET-enabled binaries (busybox) stay runnable.
    add(("F3 0F 1E FA", "endbr64", "", ""))
    add(("F3 0F 1E FB", "endbr32", "", ""))
    for opc in ("0D", "18", "19", "1A", "1B", "1C", "1D", "1E", "1F"):
        add((f"0F {opc} /r", "reservednop", "Ev,Gv", ""))
    add(("0F 1F /0", "nop", "Ev", ""))
    add(("0F B9 /r", "ud1", "Gv,Ev", ""))
    add(("0F 20 /r", "mov", "Ry,Cy", ""))
    add(("0F 21 /r", "mov", "Ry,Dy", ""))
    add(("0F 22 /r", "mov", "Cy,Ry", ""))
    add(("0F 23 /r", "mov", "Dy,Ry", ""))
    add(("0F 30", "wrmsr", "", ""))
    add(("0F 31", "rdtsc", "", ""))
    add(("0F 32", "rdmsr", "", ""))
    add(("0F 34", "sysenter", "", ""))
    add(("0F 35", "sysexit/sysexit/sysexitq", "", ""))
    for cc, name in enumerate(CC_NAMES):
        add((f"0F {0x40 + cc:02X} /r", "cmov" + name, "Gv,Ev", ""))
        add((f"0F {0x80 + cc:02X}", "j" + name, "Jz", "f64"))
        add((f"0F {0x90 + cc:02X} /r", "set" + name, "Eb", ""))
    add(("0F A0", "push", "FS", "d64"))
    add(("0F A1", "pop", "FS", "d64"))
    add(("0F A2", "cpuid", "", ""))
    add(("0F A3 /r", "bt", "Ev,Gv", ""))
    add(("0F A4 /r", "shld", "Ev,Gv,Ib", ""))
    add(("0F A5 /r", "shld", "Ev,Gv,CL", ""))
    add(("0F A8", "push", "GS", "d64"))
    add(("0F A9", "pop", "GS", "d64"))
    add(("0F AB /r", "bts", "Ev,Gv", "lock"))
    add(("0F AC /r", "shrd", "Ev,Gv,Ib", ""))
    add(("0F AD /r", "shrd", "Ev,Gv,CL", ""))
    add(("NP 0F AE /0 m", "fxsave/fxsave/fxsave64", "M", ""))
    add(("NP 0F AE /1 m", "fxrstor/fxrstor/fxrstor64", "M", ""))
    add(("NP 0F AE /2 m", "ldmxcsr", "Md", ""))
    add(("NP 0F AE /3 m", "stmxcsr", "Md", ""))
    add(("NP 0F AE /5 r", "lfence", "", ""))
    add(("NP 0F AE /6 r", "mfence", "", ""))
    add(("NP 0F AE /7 r", "sfence", "", ""))
    add(("NP 0F AE /7 m", "clflush", "Mb", ""))
    add(("0F AF /r", "imul", "Gv,Ev", ""))
    add(("0F B0 /r", "cmpxchg", "Eb,Gb", "lock"))
    add(("0F B1 /r", "cmpxchg", "Ev,Gv", "lock"))
    add(("0F B2 /r m", "lss", "Gv,Mp", ""))
    add(("0F B3 /r", "btr", "Ev,Gv", "lock"))
    add(("0F B4 /r m", "lfs", "Gv,Mp", ""))
    add(("0F B5 /r m", "lgs", "Gv,Mp", ""))
    add(("0F B6 /r", "movzx", "Gv,Eb", ""))
    add(("0F B7 /r", "movzx", "Gv,Ew", ""))
    add(("0F BA /4", "bt", "Ev,Ib", ""))
    add(("0F BA /5", "bts", "Ev,Ib", "lock"))
    add(("0F BA /6", "btr", "Ev,Ib", "lock"))
    add(("0F BA /7", "btc", "Ev,Ib", "lock"))
    add(("0F BB /r", "btc", "Ev,Gv", "lock"))
    add(("0F BC /r", "bsf", "Gv,Ev", ""))
    add(("0F BD /r", "bsr", "Gv,Ev", ""))
    add(("0F BE /r", "movsx", "Gv,Eb", ""))
    add(("0F BF /r", "movsx", "Gv,Ew", ""))
    add(("0F C0 /r", "xadd", "Eb,Gb", "lock"))
    add(("0F C1 /r", "xadd", "Ev,Gv", "lock"))
    add(("0F C7 /1 m", "cmpxchg8b", "Mq", "lock W0"))
    add(("0F C7 /1 m", "cmpxchg16b", "Mdq", "lock W1 o64"))
    add(("0F C8+r", "bswap", "Zv", ""))
    # --- MMX (SDM Vol. 1 ch. 9) and the SSE/SSE2 additions on mm registers: P is the mm register ModRM.reg
    # names, Q an mm register (ModRM.rm) or memory, N an mm register (ModRM.rm) only ---
    add(("NP 0F 6E /r", "movd/movd/movq", "Pq,Ey", ""))
    add(("NP 0F 7E /r", "movd/movd/movq", "Ey,Pq", ""))
    add(("NP 0F 6F /r", "movq", "Pq,Qq", ""))
    add(("NP 0F 7F /r", "movq", "Qq,Pq", ""))
    add(("NP 0F 77", "emms", "", ""))
    add(("NP 0F 70 /r", "pshufw", "Pq,Qq,Ib", ""))
    add(("NP 0F E7 /r m", "movntq", "Mq,Pq", ""))
    add(("F2 0F D6 /r r", "movdq2q", "Pq,Ux", ""))
    add(("F3 0F D6 /r r", "movq2dq", "Vx,Nq", ""))
    # --- SSE/SSE2: moves, packed-integer and logic ops, scalar floating point (what glibc's baseline
    # string/memory functions and busybox's arithmetic use; no packed floating-point arithmetic) ---
    for opc, ps, pd in (("10", "movups", "movupd"), ("28", "movaps", "movapd")):
        store = f"{int(opc, 16) + 1:02X}"
        add((f"NP 0F {opc} /r", ps, "Vx,Wx", ""))
        add((f"NP 0F {store} /r", ps, "Wx,Vx", ""))
        add((f"66 0F {opc} /r", pd, "Vx,Wx", ""))
        add((f"66 0F {store} /r", pd, "Wx,Vx", ""))
    add(("F3 0F 10 /r", "movss", "Vx,Wd", ""))
    add(("F3 0F 11 /r", "movss", "Wd,Vx", ""))
    add(("F2 0F 10 /r", "movsd", "Vx,Wq", ""))
    add(("F2 0F 11 /r", "movsd", "Wq,Vx", ""))
    add(("NP 0F 12 /r m", "movlps", "Vx,Mq", ""))
    add(("NP 0F 12 /r r", "movhlps", "Vx,Ux", ""))
    add(("NP 0F 13 /r m", "movlps", "Mq,Vx", ""))
    add(("NP 0F 16 /r m", "movhps", "Vx,Mq", ""))
    add(("NP 0F 16 /r r", "movlhps", "Vx,Ux", ""))
    add(("NP 0F 17 /r m", "movhps", "Mq,Vx", ""))
    add(("66 0F 12 /r m", "movlpd", "Vx,Mq", ""))
    add(("66 0F 13 /r m", "movlpd", "Mq,Vx", ""))
    add(("66 0F 16 /r m", "movhpd", "Vx,Mq", ""))
    add(("66 0F 17 /r m", "movhpd", "Mq,Vx", ""))
    add(("NP 0F 2B /r m", "movntps", "Mx,Vx", ""))
    add(("66 0F 2B /r m", "movntpd", "Mx,Vx", ""))
    add(("66 0F E7 /r m", "movntdq", "Mx,Vx", ""))
    add(("NP 0F C3 /r m", "movnti", "My,Gy", ""))
    add(("66 0F 6E /r", "movd/movd/movq", "Vx,Ey", ""))
    add(("66 0F 7E /r", "movd/movd/movq", "Ey,Vx", ""))
    add(("F3 0F 7E /r", "movq", "Vx,Wq", ""))
    add(("66 0F D6 /r", "movq", "Wq,Vx", ""))
    add(("66 0F 6F /r", "movdqa", "Vx,Wx", ""))
    add(("66 0F 7F /r", "movdqa", "Wx,Vx", ""))
    add(("F3 0F 6F /r", "movdqu", "Vx,Wx", ""))
    add(("F3 0F 7F /r", "movdqu", "Wx,Vx", ""))
    for opc, ps, pd in (("14", "unpcklps", "unpcklpd"), ("15", "unpckhps", "unpckhpd"), ("54", "andps", "andpd"),
                        ("55", "andnps", "andnpd"), ("56", "orps", "orpd"), ("57", "xorps", "xorpd")):
        add((f"NP 0F {opc} /r", ps, "Vx,Wx", ""))
        add((f"66 0F {opc} /r", pd, "Vx,Wx", ""))
    add(("NP 0F C6 /r", "shufps", "Vx,Wx,Ib", ""))
    add(("66 0F C6 /r", "shufpd", "Vx,Wx,Ib", ""))
    add(("NP 0F 50 /r r", "movmskps", "Gy,Ux", ""))
    add(("66 0F 50 /r r", "movmskpd", "Gy,Ux", ""))
    # The packed-integer ops on mm (NP) and xmm (66) registers: reg, reg-or-memory, register-only operands.
    for prefix, reg, rm, rm_reg, maskmov in (("NP", "Pq", "Qq", "Nq", "maskmovq"),
                                             ("66", "Vx", "Wx", "Ux", "maskmovdqu")):
        for opc, name in PACKED_INT_OPS:
            if prefix == "66" or name not in XMM_ONLY:
                add((f"{prefix} 0F {opc} /r", name, f"{reg},{rm}", ""))
        for opc, digit, name in PACKED_SHIFT_IMM:
            if prefix == "66" or name not in XMM_ONLY:
                add((f"{prefix} 0F {opc} /{digit} r", name, f"{rm_reg},Ib", ""))
        add((f"{prefix} 0F D7 /r r", "pmovmskb", f"Gy,{rm_reg}", ""))
        add((f"{prefix} 0F C5 /r r", "pextrw", f"Gy,{rm_reg},Ib", ""))
        add((f"{prefix} 0F C4 /r", "pinsrw", f"{reg},Ew,Ib", ""))
        add((f"{prefix} 0F F7 /r r", maskmov, f"BD{reg[1]},{reg},{rm_reg}", ""))
    add(("66 0F 70 /r", "pshufd", "Vx,Wx,Ib", ""))
    add(("F2 0F 70 /r", "pshuflw", "Vx,Wx,Ib", ""))
    add(("F3 0F 70 /r", "pshufhw", "Vx,Wx,Ib", ""))
    for opc, name in SCALAR_FP_OPS:
        add((f"F2 0F {opc} /r", name + "sd", "Vx,Wq", ""))
        add((f"F3 0F {opc} /r", name + "ss", "Vx,Wd", ""))
    add(("F2 0F 2A /r", "cvtsi2sd", "Vx,Ey", ""))
    add(("F3 0F 2A /r", "cvtsi2ss", "Vx,Ey", ""))
    add(("F2 0F 2C /r", "cvttsd2si", "Gy,Wq", ""))
    add(("F2 0F 2D /r", "cvtsd2si", "Gy,Wq", ""))
    add(("F3 0F 2C /r", "cvttss2si", "Gy,Wd", ""))
    add(("F3 0F 2D /r", "cvtss2si", "Gy,Wd", ""))
    add(("F3 0F 5A /r", "cvtss2sd", "Vx,Wd", ""))
    add(("F2 0F 5A /r", "cvtsd2ss", "Vx,Wq", ""))
    add(("66 0F 2E /r", "ucomisd", "Vx,Wq", ""))
    add(("66 0F 2F /r", "comisd", "Vx,Wq", ""))
    add(("NP 0F 2E /r", "ucomiss", "Vx,Wd", ""))
    add(("NP 0F 2F /r", "comiss", "Vx,Wd", ""))
    return t


TABLE: tuple[tuple[str, str, str, str], ...] = tuple(_rows())


def handler_name(mnemonic: str, operands: str) -> str:
    """`add_Eb_Gb`: the first mnemonic alternative and the operand specs."""
    base = mnemonic.split("/")[0]
    return base + ("_" + operands.replace(",", "_") if operands else "")
