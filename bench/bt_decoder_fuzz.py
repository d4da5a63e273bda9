"""Differential fuzz of the bt decoder against iced-x86 (the million-case run).

For random byte strings in 16-, 32- and 64-bit mode, the bt decoder and
iced-x86 must agree: for every instruction the opcode table implements, the
same length, mnemonic and operands (registers, memory base/index/scale/
displacement/segment, immediates, branch targets); where the table says #UD,
iced must report an invalid encoding, or an instruction outside the table.
An instruction iced decodes whose mnemonic the table implements, but which
the table rejects, is a mismatch too, unless its form is listed in
`UNIMPLEMENTED_FORMS` with the reason.

    python bench/bt_decoder_fuzz.py [N per mode, default 1000000] [--seed S]

The unit suite (tests/unit/engines/bt/test_decoder_iced.py) runs a few
thousand cases per mode through `run`.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import iced_x86 as iced  # noqa: E402

from xvm.engines.bt.decoder.decoder import OPDEFS, NeedMoreBytes, decode  # noqa: E402
from xvm.engines.bt.decoder.disasm import SREGS, operands  # noqa: E402
from xvm.engines.bt.faults import GuestFault  # noqa: E402

_REG_NAMES = {v: k.lower() for k, v in vars(iced.Register).items() if not k.startswith("_") and isinstance(v, int)}
_MNEMONICS = {v: k.lower() for k, v in vars(iced.Mnemonic).items() if not k.startswith("_") and isinstance(v, int)}
_K = iced.OpKind
#: Immediate kinds and the width iced's sign-extended value is shown at.
_IMMEDIATES = {_K.IMMEDIATE8: 8, _K.IMMEDIATE16: 16, _K.IMMEDIATE32: 32, _K.IMMEDIATE64: 64, _K.IMMEDIATE8TO16: 16,
               _K.IMMEDIATE8TO32: 32, _K.IMMEDIATE8TO64: 64, _K.IMMEDIATE32TO64: 64, _K.IMMEDIATE8_2ND: 8}
_NEAR = {_K.NEAR_BRANCH16, _K.NEAR_BRANCH32, _K.NEAR_BRANCH64}
_STRING_MEM = {_K.MEMORY_SEG_SI: "si", _K.MEMORY_SEG_ESI: "esi", _K.MEMORY_SEG_RSI: "rsi",
               _K.MEMORY_SEG_DI: "di", _K.MEMORY_SEG_EDI: "edi", _K.MEMORY_SEG_RDI: "rdi",
               _K.MEMORY_ESDI: "di", _K.MEMORY_ESEDI: "edi", _K.MEMORY_ESRDI: "rdi"}
_ES_STRING = {_K.MEMORY_ESDI, _K.MEMORY_ESEDI, _K.MEMORY_ESRDI}
#: Mnemonics as the table spells them where iced's differ (iced -> table).
_MNEMONIC_ALIASES = {"fwait": "wait", "r8l": "r8b", "fstsw": "fnstsw"}
#: Table mnemonics (all size alternatives): an iced instruction with one of these must decode here too.
TABLE_MNEMONICS = {m for d in OPDEFS for m in d.mnemonics}
#: Forms iced accepts that share a mnemonic with the table but are deliberately not implemented.
UNIMPLEMENTED_FORMS = {
    "cmpsd": "SSE2 CMPSD xmm (F2 0F C2); the string CMPSD is implemented",
}
#: (table, iced) pairs where iced assumes a CPUID feature this CPU does not advertise; without LZCNT/BMI1
#: F3 0F BD / F3 0F BC execute as BSR / BSF (SDM Vol. 2 LZCNT, TZCNT), F3 0F 09 as WBINVD, CLDEMOTE and
#: PREFETCHIT0/1 as hint NOPs, and without CET RDSSP is a NOP too.
_SAME_WITHOUT_FEATURE = {("bsr", "lzcnt"), ("bsf", "tzcnt"), ("wbinvd", "wbnoinvd"), ("reservednop", "cldemote"),
                         ("reservednop", "prefetchit0"), ("reservednop", "prefetchit1"),
                         ("reservednop", "rdsspd"), ("reservednop", "rdsspq")}
_IP = {16: 0x1000, 32: 0x401000, 64: 0x7FFF00001000}
_PREFIXES = (0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)


def _norm_reg(name: str) -> str:
    name = name.lower()
    if name.startswith("r") and name.endswith("l") and name[1:-1].isdigit():
        return name[:-1] + "b"
    return name


def _flat_segment(seg: int, bits: int) -> int:
    """64-bit mode: ES/CS/SS/DS have no base, so which of them iced names (it keeps ignored prefixes) is moot."""
    return -1 if bits == 64 and seg < 4 else seg


def iced_operands(ins, bits: int) -> list[tuple]:
    """iced's operands in the tuple form of disasm.operands (memory size left out)."""
    out = []
    for i in range(ins.op_count):
        kind = ins.op_kind(i)
        if kind == _K.REGISTER:
            out.append(("reg", _norm_reg(_REG_NAMES[ins.op_register(i)])))
        elif kind in _IMMEDIATES:
            value = ins.immediate(i) if kind != _K.IMMEDIATE8_2ND else ins.immediate8_2nd
            out.append(("imm", value & ((1 << _IMMEDIATES[kind]) - 1)))
        elif kind in _NEAR:
            out.append(("imm", ins.near_branch_target))
        elif kind in (_K.FAR_BRANCH16, _K.FAR_BRANCH32):
            off = ins.far_branch16 if kind == _K.FAR_BRANCH16 else ins.far_branch32
            out.append(("far", ins.far_branch_selector, off))
        elif kind == _K.MEMORY:
            base = _REG_NAMES[ins.memory_base].lower() if ins.memory_base else None
            index = _REG_NAMES[ins.memory_index].lower() if ins.memory_index else None
            seg = _flat_segment(SREGS.index(_REG_NAMES[ins.memory_segment].lower()), bits)
            out.append(("mem", seg, base, index, ins.memory_index_scale if index else 1, ins.memory_displacement))
        elif kind in _STRING_MEM:
            seg = 0 if kind in _ES_STRING else SREGS.index(_REG_NAMES[ins.memory_segment].lower())
            seg = _flat_segment(seg, bits)
            out.append(("mem", seg, _STRING_MEM[kind], None, 1, 0))
        else:
            out.append(("?", kind))
    return out


def _mine(ins, ops: list[tuple], bits: int) -> list[tuple]:
    """Our operands with memory sizes dropped; XLAT's implicit [rBX+AL] made explicit as iced shows it."""
    if ins.op.mnemonic == "xlatb":
        return [("mem", _flat_segment(ins.seg, bits), {2: "bx", 4: "ebx", 8: "rbx"}[ins.addrsize], "al", 1, 0)]
    out = []
    for op in ops:
        if op[0] == "mem":
            out.append(("mem", _flat_segment(op[2], bits)) + op[3:])
        else:
            out.append(op)
    return out


def compare(data: bytes, bits: int) -> Optional[str]:
    """None when both decoders agree on `data`, else a description of the disagreement."""
    ip = _IP[bits]
    ref = iced.Decoder(bits, data, ip=ip).decode()
    ref_valid = ref.code != iced.Code.INVALID
    ref_name = _MNEMONIC_ALIASES.get(_MNEMONICS.get(ref.mnemonic, "?"), _MNEMONICS.get(ref.mnemonic, "?"))
    try:
        ins = decode(data, bits)
    except GuestFault as fault:
        if not ref_valid or ref_name not in TABLE_MNEMONICS or ref_name in UNIMPLEMENTED_FORMS:
            return None
        return f"table #{fault.vector} but iced decodes {ref_name} (len {ref.len})"
    except NeedMoreBytes:
        return "decoder wanted more bytes"
    if not ref_valid:
        return f"table decodes {ins.mnemonic} (len {ins.length}) but iced says invalid"
    if ins.length != ref.len:
        return f"length {ins.length} vs iced {ref.len} ({ins.mnemonic} / {ref_name})"
    if (ins.mnemonic, ref_name) in _SAME_WITHOUT_FEATURE:
        return None  # a different instruction on a CPU with the feature: only the length must agree
    if ins.mnemonic != ref_name:
        return f"mnemonic {ins.mnemonic} vs iced {ref_name}"
    mine = _mine(ins, operands(ins, (ip + ins.length) & ((1 << bits) - 1)), bits)
    theirs = iced_operands(ref, bits)
    if mine != theirs:
        return f"{ins.mnemonic}: operands {mine} vs iced {theirs}"
    return None


def random_case(rng: random.Random, bits: int) -> bytes:
    """Random bytes biased toward interesting encodings: prefixes, REX, the 0F map."""
    out = bytearray()
    if rng.random() < 0.5:
        out += bytes(rng.choice(_PREFIXES) for _ in range(rng.randint(1, 3)))
    if bits == 64 and rng.random() < 0.4:
        out.append(0x40 | rng.randrange(16))
    if rng.random() < 0.35:
        out.append(0x0F)
    out += rng.randbytes(16) if hasattr(rng, "randbytes") else bytes(rng.randrange(256) for _ in range(16))
    return bytes(out[:24])


def run(n: int, bits: int, seed: int = 1) -> tuple[int, list[tuple[str, str]]]:
    """Compare n random cases; return (cases the table decodes, mismatches as (hex, reason))."""
    rng = random.Random(seed * 1000 + bits)
    mismatches = []
    implemented = 0
    for _ in range(n):
        data = random_case(rng, bits)
        reason = compare(data, bits)
        if reason:
            mismatches.append((data.hex(), reason))
        elif iced.Decoder(bits, data).decode().code != iced.Code.INVALID:
            implemented += 1
    return implemented, mismatches


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 1_000_000
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 1
    failed = 0
    for bits in (16, 32, 64):
        start = time.perf_counter()
        valid, mismatches = run(n, bits, seed)
        elapsed = time.perf_counter() - start
        print(f"{bits}-bit: {n} cases ({valid} valid instructions), {len(mismatches)} mismatches, "
              f"{n / elapsed:.0f} cases/s")
        for data, reason in mismatches[:20]:
            print(f"  {data}: {reason}")
        failed += len(mismatches)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
