"""Translated execution ends in exactly the state interpretation does (random programs).

Hypothesis writes 32-bit programs from a set of instruction templates —
ALU, shifts, loads and stores, stack, LEA, SETcc/CMOVcc, forward Jcc, and
stores that patch the immediates of instructions further on — wraps them in
a loop that runs three times (so blocks are cached, chained, then patched),
and runs each on one bt vCPU twice: every instruction through the
interpreter (--trace) and through the translator. Registers, flags,
instruction count and memory must agree.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xvm.arch.x86.regs import CR0_ET, CR0_PE, Regs, Segment, SpecialRegs
from xvm.engines.base import Hlt
from xvm.engines.bt.engine import BtEngine
from xvm.memory.guest_memory import GuestMemory

pytestmark = pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm is needed to assemble test guests")

CODE = 0x1000
DATA = 0x9000
REGS = ("eax", "ecx", "edx", "esi", "edi", "ebp")      # ESP is the stack, EBX the data pointer
REGS8 = ("al", "cl", "dl", "ah", "ch", "dh")
ALU = ("add", "sub", "and", "or", "xor", "adc", "sbb", "cmp", "test", "mov")
SHIFTS = ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr")
CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")

reg = st.sampled_from(REGS)
imm = st.integers(0, 0xFFFFFFFF)
offset = st.integers(0, 0x1F8).map(lambda n: n * 4)


def _simple() -> st.SearchStrategy:
    return st.one_of(
        st.builds("{} {}, {}".format, st.sampled_from(ALU), reg, reg),
        st.builds("{} {}, {:#x}".format, st.sampled_from(ALU), reg, imm),
        st.builds("{} {}".format, st.sampled_from(("inc", "dec", "neg", "not", "bswap")), reg),
        st.builds("{} {}, {}".format, st.sampled_from(SHIFTS), reg, st.integers(1, 31)),
        st.builds("mov {}, [ebx+{}]".format, reg, offset),
        st.builds("mov [ebx+{}], {}".format, offset, reg),
        st.builds("{} dword [ebx+{}], {}".format, st.sampled_from(("add", "sub", "xor", "or")), offset, reg),
        st.builds("push {}".format, reg),
        st.builds("pop {}".format, reg),
        st.builds("lea {}, [{}+{}*{}+{}]".format, reg, reg, reg, st.sampled_from((1, 2, 4, 8)),
                  st.integers(-0x1000, 0x1000)),
        st.builds("set{} {}".format, st.sampled_from(CONDITIONS), st.sampled_from(REGS8)),
        st.builds("cmov{} {}, {}".format, st.sampled_from(CONDITIONS), reg, reg),
        st.builds("imul {}, {}".format, reg, reg),
        st.builds("movzx {}, {}".format, reg, st.sampled_from(REGS8)),
        st.builds("xchg {}, {}".format, reg, reg),
        st.sampled_from(("stc", "clc", "cmc", "cld", "pushfd\npopfd", "lahf", "sahf", "cdq", "cwde")),
    )


@st.composite
def programs(draw) -> str:
    """A loop body: simple instructions, forward branches, and patches of later immediates."""
    lines = []
    patchable = 0
    for n in range(draw(st.integers(1, 30))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines += [f"j{draw(st.sampled_from(CONDITIONS))} .skip{n}", draw(_simple()), f".skip{n}:"]
        elif kind == 1:
            lines.append(f".imm{patchable}: mov {draw(reg)}, {draw(imm):#x}")
            patchable += 1
        else:
            lines.append(draw(_simple()))
    for target in range(patchable):
        # Patch an immediate ahead of (or behind) the store: self-modifying code in a running loop.
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, f"mov dword [.imm{target} + 1], {draw(imm):#x}")
    return "\n".join(lines)


def assemble(tmp_path, body: str) -> bytes:
    src = tmp_path / "guest.asm"
    out = tmp_path / "guest.bin"
    src.write_text(f"""bits 32
org {CODE:#x}
    mov esp, 0x8000
    mov ebx, {DATA:#x}
    mov dword [0xa000], 3
top:
{body}
    dec dword [0xa000]
    jnz top
    hlt
""")
    subprocess.run(["nasm", "-f", "bin", "-o", str(out), str(src)], check=True, capture_output=True)
    return out.read_bytes()


def run(code: bytes, translate: bool) -> tuple:
    memory = GuestMemory.allocate(1 << 20)
    try:
        memory.write(CODE, code)
        vm = BtEngine().create_vm(memory, 1)
        vm.connect(lambda exit_: None, _NoInterrupts(), lambda irq: None, None, _NoTimers(),
                   trace=None if translate else (lambda line: None))
        vcpu = vm.create_vcpu(0)
        sregs = SpecialRegs()
        sregs.cs = Segment(base=0, limit=0xFFFFFFFF, selector=0x08, type_=0xB, db=1, g=1)
        sregs.ds = sregs.es = sregs.ss = sregs.fs = sregs.gs = Segment(
            base=0, limit=0xFFFFFFFF, selector=0x10, type_=0x3, db=1, g=1)
        sregs.cr0 = CR0_PE | CR0_ET
        vcpu.set_sregs(sregs)
        vcpu.set_regs(Regs(rip=CODE, rflags=0x2))
        exit_ = vcpu.run()
        stats = vcpu.stats
        return exit_, vcpu.get_regs(), vcpu.cpu.icount, memory.read(0, 0xB000), stats
    finally:
        memory.close()


class _NoInterrupts:
    def pending(self, cpu: int) -> bool:
        return False

    def acknowledge(self, cpu: int) -> int:
        raise AssertionError("no interrupt is pending")


class _NoTimers:
    def tick(self, now_ns: int) -> None:
        pass

    def next_deadline(self) -> None:
        return None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=programs())
def test_translation_matches_interpretation(tmp_path, body):
    code = assemble(tmp_path, body)
    interpreted = run(code, translate=False)
    translated = run(code, translate=True)
    assert isinstance(interpreted[0], Hlt) and isinstance(translated[0], Hlt)
    assert translated[1:4] == interpreted[1:4], body
    assert translated[4]["efficiency"] > 0.5
