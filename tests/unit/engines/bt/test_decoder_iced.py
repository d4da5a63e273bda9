"""Differential test of the bt decoder/disassembler against iced-x86 (a sample of bench/bt_decoder_fuzz.py).

Same length, mnemonic and operands for every instruction the table
implements, and #UD exactly where the table says (iced reports the encoding
invalid or an instruction outside the table). The million-case run is
`python bench/bt_decoder_fuzz.py`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from xvm.engines.bt.decoder.decoder import NeedMoreBytes, decode
from xvm.engines.bt.faults import GP, UD, GuestFault

pytest.importorskip("iced_x86")

_PATH = Path(__file__).resolve().parents[4] / "bench" / "bt_decoder_fuzz.py"
_spec = importlib.util.spec_from_file_location("bt_decoder_fuzz", _PATH)
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

CASES = 3000


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_random_bytes_agree_with_iced(bits):
    valid, mismatches = fuzz.run(CASES, bits, seed=2)
    assert valid > CASES // 3
    assert not mismatches, "\n".join(f"{data}: {reason}" for data, reason in mismatches[:20])


@pytest.mark.parametrize("bits,code", [
    (64, "48b80102030405060708"),      # mov rax, imm64
    (64, "8b0500100000"),              # mov eax, [rip+1000h]
    (64, "4088e0"),                    # mov al, spl (REX turns AH into SPL)
    (64, "f3480fbdc1"),                # bsr rax, rcx (no LZCNT advertised)
    (32, "66f2f3a7"),                  # repe cmpsw: the last of F2/F3 wins
    (16, "268b4706"),                  # mov ax, es:[bx+6]
    (16, "ea5be000f0"),                # jmp 0F000h:0E05Bh
    (32, "0f20c0"),                    # mov eax, cr0
    (64, "0f01f8"),                    # swapgs
    (64, "480fc70e"),                  # cmpxchg16b [rsi]
])
def test_known_encodings_agree(bits, code):
    assert fuzz.compare(bytes.fromhex(code) + bytes(16), bits) is None


@pytest.mark.parametrize("bits,code", [
    (64, "06"),        # PUSH ES: invalid in 64-bit mode
    (64, "ce"),        # INTO
    (64, "d40a"),      # AAM
    (64, "9a000000000000"),  # far CALL ptr16:32
    (32, "f001c0"),    # LOCK with a register destination
    (32, "f090"),      # LOCK NOP
    (32, "8ec8"),      # MOV CS, ax
    (32, "0f22c8"),    # MOV CR1
    (32, "c5c0"),      # LDS with a register operand
])
def test_invalid_encodings_are_ud(bits, code):
    data = bytes.fromhex(code) + bytes(16)
    with pytest.raises(GuestFault) as info:
        decode(data, bits)
    assert info.value.vector == UD
    assert fuzz.compare(data, bits) is None


def test_fifteen_byte_limit_is_gp():
    with pytest.raises(GuestFault) as info:
        decode(bytes([0x66] * 14) + bytes.fromhex("0504030201"), 32)
    assert (info.value.vector, info.value.error_code) == (GP, 0)
    assert decode(bytes([0x66] * 12) + bytes.fromhex("050403"), 32).length == 15


def test_short_input_asks_for_more_bytes():
    with pytest.raises(NeedMoreBytes):
        decode(bytes.fromhex("b8010203"), 32)
