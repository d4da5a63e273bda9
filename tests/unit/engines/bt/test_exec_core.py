"""Interpreter behaviour beyond flags: string ops, precise faults, control flow, stack, bit ops, SSE."""

from __future__ import annotations

import pytest
from unit.engines.bt.test_exec_harness import CODE, SparseMmu, fault_of, make_cpu, run_code

from xvm.engines.bt.cpu import disassemble_at, execute_one
from xvm.engines.bt.faults import GP, PF, SS_FAULT
from xvm.engines.bt.state import CS

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)


def test_rep_movsb_runs_in_chunks_and_counts_iterations():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    src, dst = 0x20000, 0x30000
    data = bytes(range(256)) * 40  # 10240 bytes: crosses pages
    mmu.write_bytes(src, data, False)
    cpu.regs[RSI], cpu.regs[RDI], cpu.regs[RCX] = src, dst, len(data)
    run_code(cpu, mmu, b"\xf3\xa4")
    assert mmu.read_bytes(dst, len(data), False) == data
    assert (cpu.regs[RSI], cpu.regs[RDI], cpu.regs[RCX]) == (src + len(data), dst + len(data), 0)
    assert cpu.icount == len(data)


def test_rep_stosq_fault_midway_keeps_progress_and_restarts():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    dst = 0x40000 - 16
    mmu.absent.add(0x40)  # the page at 0x40000
    cpu.regs[RDI], cpu.regs[RCX], cpu.regs[RAX] = dst, 4, 0x1122334455667788
    mmu.write_bytes(CODE, b"\xf3\x48\xab", False)
    with pytest.raises(Exception) as info:
        for _ in range(4):
            execute_one(cpu, mmu, None)
    assert info.value.vector == PF and info.value.cr2 == 0x40000
    assert cpu.rip == CODE  # precise: at the REP instruction
    assert (cpu.regs[RDI], cpu.regs[RCX]) == (0x40000, 2)  # two stores done
    assert mmu.read(dst, 8, False) == 0x1122334455667788
    mmu.absent.clear()
    run_code(cpu, mmu, b"\xf3\x48\xab")
    assert cpu.regs[RCX] == 0 and mmu.read(0x40008, 8, False) == 0x1122334455667788


def test_overlapping_forward_movsb_replicates_a_pattern():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    mmu.write_bytes(0x5000, b"ab", False)
    cpu.regs[RSI], cpu.regs[RDI], cpu.regs[RCX] = 0x5000, 0x5002, 10
    run_code(cpu, mmu, b"\xf3\xa4")
    assert mmu.read_bytes(0x5000, 12, False) == b"abababababab"


def test_repne_scasb_finds_a_byte():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    mmu.write_bytes(0x6000, b"hello\0world", False)
    cpu.regs[RDI], cpu.regs[RCX], cpu.regs[RAX] = 0x6000, 100, 0
    run_code(cpu, mmu, b"\xf2\xae")
    assert cpu.regs[RDI] == 0x6006 and cpu.regs[RCX] == 94 and cpu.rflags & 0x40


def test_repe_cmpsw_stops_at_difference_backwards():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    mmu.write_bytes(0x7000, b"\x01\x00\x02\x00\x03\x00", False)
    mmu.write_bytes(0x8000, b"\x09\x00\x02\x00\x03\x00", False)
    cpu.regs[RSI], cpu.regs[RDI], cpu.regs[RCX] = 0x7004, 0x8004, 3
    cpu.rflags |= 0x400  # DF
    run_code(cpu, mmu, b"\xf3\x66\xa7")
    assert cpu.regs[RCX] == 0 and cpu.regs[RSI] == 0x6FFE and not cpu.rflags & 0x40


def test_faulting_memory_write_changes_nothing():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.readonly.add(0x50)
    cpu.regs[RBX] = 0x50000
    cpu.regs[RAX] = 5
    flags = cpu.rflags
    fault = fault_of(cpu, mmu, b"\x48\x01\x03")  # add [rbx], rax
    assert fault.vector == PF and fault.error_code & 2
    assert cpu.rip == CODE and cpu.rflags == flags and cpu.regs[RAX] == 5


def test_faulting_push_leaves_rsp():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    cpu.regs[RSP] = 0x90000
    mmu.absent.add(0x8F)
    fault = fault_of(cpu, mmu, b"\x50")
    assert fault.vector == PF and cpu.regs[RSP] == 0x90000


def test_pop_to_memory_fault_restores_rsp():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    cpu.regs[RSP] = 0x9000
    mmu.readonly.add(0xA0)
    cpu.regs[RBX] = 0xA0000
    fault = fault_of(cpu, mmu, b"\x8f\x03")  # pop dword [ebx]
    assert fault.vector == PF and cpu.regs[RSP] == 0x9000


def test_call_ret_and_loop():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    # mov ecx, 5; xor eax, eax; l: call f; loop l; jmp end; f: add eax, 3; ret; end:
    code = bytes.fromhex("b905000000" "31c0" "e804000000" "e2f9" "eb04" "83c003" "c3")
    run_code(cpu, mmu, code)
    assert cpu.regs[RAX] == 15 and cpu.regs[RCX] == 0 and cpu.regs[RSP] == 0x8000


def test_near_jump_beyond_cs_limit_is_gp():
    cpu = make_cpu(32)
    cpu.segs[CS].limit = 0x10100
    fault = fault_of(cpu, SparseMmu(), b"\xe9\x00\x10\x00\x00")
    assert (fault.vector, fault.error_code) == (GP, 0) and cpu.rip == CODE


def test_16bit_ip_wraps():
    cpu = make_cpu(16)
    mmu = SparseMmu()
    cpu.rip = 0xFFFF
    mmu.write_bytes(0xFFFF, b"\x90", False)
    execute_one(cpu, mmu, None)
    assert cpu.rip == 0


def test_enter_leave_pusha_popa():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    for r in range(8):
        if r != RSP:
            cpu.regs[r] = 0x100 * (r + 1)
    run_code(cpu, mmu, bytes.fromhex("60" "c8100002" "c9" "61"))  # pusha; enter 16,2; leave; popa
    assert [cpu.regs[r] for r in range(8)] == [0x100 * (r + 1) if r != RSP else 0x8000 for r in range(8)]


def test_enter_nested_frame_layout():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    cpu.regs[RBP] = 0x7000
    mmu.write(0x6FFC, 4, 0xAAAA, False)  # the outer frame's saved display entry
    run_code(cpu, mmu, bytes.fromhex("c8080002"))  # enter 8, 2
    assert mmu.read(0x7FFC, 4, False) == 0x7000  # old EBP
    assert mmu.read(0x7FF8, 4, False) == 0xAAAA  # copied from [EBP-4]
    assert mmu.read(0x7FF4, 4, False) == 0x7FFC  # frame pointer
    assert cpu.regs[RBP] == 0x7FFC and cpu.regs[RSP] == 0x7FF4 - 8


def test_stack_limit_in_protected_mode_is_ss_fault():
    cpu = make_cpu(32)
    cpu.segs[2].limit = 0x7FFF
    cpu.regs[RSP] = 0x8002
    fault = fault_of(cpu, SparseMmu(), b"\x58")  # pop eax at ESP beyond the limit
    assert fault.vector == SS_FAULT


def test_bt_memory_with_negative_bit_offset():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    mmu.write(0x5FFC, 4, 1 << 31, False)
    cpu.regs[RBX], cpu.regs[RCX] = 0x6000, (-1) & 0xFFFFFFFF
    run_code(cpu, mmu, bytes.fromhex("0fab0b"))  # bts [ebx], ecx: bit -1 = bit 31 of [ebx-4]
    assert cpu.rflags & 1 and mmu.read(0x5FFC, 4, False) == 1 << 31
    cpu.rip = CODE
    run_code(cpu, mmu, bytes.fromhex("0fb30b"))  # btr
    assert mmu.read(0x5FFC, 4, False) == 0


def test_bsf_bsr_and_zero_source():
    cpu = make_cpu(64)
    cpu.regs[RCX] = 0x00F0
    cpu.regs[RAX] = 77
    run_code(cpu, SparseMmu(), bytes.fromhex("480fbcc1" "480fbdd1"))  # bsf rax, rcx; bsr rdx, rcx
    assert cpu.regs[RAX] == 4 and cpu.regs[RDX] == 7 and not cpu.rflags & 0x40
    cpu = make_cpu(64)
    cpu.regs[RAX] = 77
    run_code(cpu, SparseMmu(), bytes.fromhex("480fbcc1"))
    assert cpu.regs[RAX] == 77 and cpu.rflags & 0x40


def test_cmpxchg_xadd_cmpxchg16b():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.write(0x6000, 8, 10, False)
    cpu.regs[RBX], cpu.regs[RAX], cpu.regs[RCX] = 0x6000, 10, 99
    run_code(cpu, mmu, bytes.fromhex("480fb10b"))  # cmpxchg [rbx], rcx
    assert mmu.read(0x6000, 8, False) == 99 and cpu.rflags & 0x40
    cpu.rip = CODE
    run_code(cpu, mmu, bytes.fromhex("480fb10b"))  # now differs: rax = 99
    assert cpu.regs[RAX] == 99 and not cpu.rflags & 0x40
    cpu.rip = CODE
    cpu.regs[RCX] = 1
    run_code(cpu, mmu, bytes.fromhex("480fc10b"))  # xadd [rbx], rcx
    assert mmu.read(0x6000, 8, False) == 100 and cpu.regs[RCX] == 99
    mmu.write(0x7000, 8, 1, False)
    mmu.write(0x7008, 8, 2, False)
    cpu.rip = CODE
    cpu.regs[RSI], cpu.regs[RAX], cpu.regs[RDX], cpu.regs[RBX], cpu.regs[RCX] = 0x7000, 1, 2, 3, 4
    run_code(cpu, mmu, bytes.fromhex("480fc70e"))  # cmpxchg16b [rsi]
    assert (mmu.read(0x7000, 8, False), mmu.read(0x7008, 8, False)) == (3, 4) and cpu.rflags & 0x40
    cpu.rip = CODE
    cpu.regs[RSI] = 0x7008
    assert fault_of(cpu, mmu, bytes.fromhex("480fc70e")).vector == GP  # misaligned


def test_rip_relative_and_byte_registers():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.write(CODE + 0x100, 8, 0x1234, False)
    cpu.regs[RSP] = 0xAB00
    run_code(cpu, mmu, bytes.fromhex("488b05f9000000" "4088e0"))  # mov rax, [rip+0F9h]; mov al, spl
    assert cpu.regs[RAX] == 0x1200
    cpu = make_cpu(64)
    cpu.regs[RAX] = 0xAB00
    run_code(cpu, SparseMmu(), bytes.fromhex("88e1"))  # mov cl, ah
    assert cpu.regs[RCX] & 0xFF == 0xAB


def test_sse_string_scan_idiom():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.write_bytes(0x6000, b"abc\0" + b"x" * 12, False)
    cpu.regs[RDI] = 0x6000
    # pxor xmm0,xmm0; movdqu xmm1,[rdi]; pcmpeqb xmm1,xmm0; pmovmskb eax,xmm1; bsf eax,eax
    run_code(cpu, mmu, bytes.fromhex("660fefc0" "f30f6f0f" "660f74c8" "660fd7c1" "0fbcc0"))
    assert cpu.regs[RAX] == 3


def test_fxsave_fxrstor_round_trip():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    cpu.xmm[3] = 0x0102030405060708090A0B0C0D0E0F10
    cpu.mxcsr = 0x1FA0
    cpu.regs[RBX] = 0x9000
    run_code(cpu, mmu, bytes.fromhex("0fae03"))  # fxsave [rbx]
    assert mmu.read(0x9000 + 24, 4, False) == 0x1FA0 and mmu.read(0x9000, 2, False) == 0x037F
    cpu.xmm[3] = 0
    cpu.mxcsr = 0x1F80
    cpu.rip = CODE
    run_code(cpu, mmu, bytes.fromhex("0fae0b"))  # fxrstor [rbx]
    assert cpu.xmm[3] == 0x0102030405060708090A0B0C0D0E0F10 and cpu.mxcsr == 0x1FA0


def test_disassemble_at():
    cpu = make_cpu(64)
    mmu = SparseMmu()
    mmu.write_bytes(CODE, bytes.fromhex("f3488b04c8"), False)
    text = disassemble_at(cpu, mmu)
    assert text.startswith("0010:00010000") and "mov rax,qword ptr ds:[rax+rcx*8]" in text


def test_self_modifying_code_is_never_run_stale():
    cpu = make_cpu(32)
    mmu = SparseMmu()
    mmu.write_bytes(CODE, bytes.fromhex("b801000000"), False)  # mov eax, 1
    execute_one(cpu, mmu, None)
    assert cpu.regs[RAX] == 1
    mmu.write_bytes(CODE, bytes.fromhex("b802000000"), False)  # the guest patches the immediate
    cpu.rip = CODE
    execute_one(cpu, mmu, None)
    assert cpu.regs[RAX] == 2


def test_locked_increments_from_two_vcpu_threads_do_not_interleave():
    import sys
    import threading

    mmu = SparseMmu()
    mmu.write_bytes(CODE, bytes.fromhex("f0ff03"), False)  # lock inc dword [rbx]
    rounds = 3000

    def vcpu():
        cpu = make_cpu(64)
        cpu.regs[RBX] = 0x6000
        for _ in range(rounds):
            cpu.rip = CODE
            execute_one(cpu, mmu, None)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=vcpu) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert mmu.read(0x6000, 4, False) == 2 * rounds


def test_single_step_trap_after_each_instruction():
    from xvm.engines.bt.state import SegmentCache

    cpu = make_cpu(16)
    mmu = SparseMmu()
    cpu.segs[1] = SegmentCache(0, 0, 0xFFFF, 0x9B, 0)
    cpu.idtr_base, cpu.idtr_limit = 0, 0x3FF
    mmu.write(4, 4, 0x0000_2000, False)  # IVT vector 1 -> 0000:2000
    cpu.rflags |= 0x100
    cpu.regs[RSP] = 0x8000
    mmu.write_bytes(cpu.rip, bytes.fromhex("40"), False)  # inc ax
    execute_one(cpu, mmu, None)
    assert cpu.regs[RAX] == 1 and cpu.rip == 0x2000 and cpu.dr[6] & (1 << 14)
    assert mmu.read(0x8000 - 6, 2, False) == 0x1001  # the pushed return IP is after INC
    assert not cpu.rflags & 0x100  # the handler runs without TF
