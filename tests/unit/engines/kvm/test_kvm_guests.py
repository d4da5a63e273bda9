"""Tiny real-mode guests run on real KVM: every exit kind the engine decodes.

Each guest is a few hand-assembled bytes at 0x1000 with CS base 0. The VMs made
through KvmEngine have the in-kernel irqchip, so HLT never reaches userspace
there: those guests end with `out 0xf4, al` (the debug-exit port) instead.
Skipped only when /dev/kvm does not exist.
"""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from xvm.arch.x86 import layout
from xvm.arch.x86.regs import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, DescriptorTable, Regs, Segment
from xvm.engines.base import Hlt, Interrupted, IoIn, IoOut, MmioRead, MmioWrite, Shutdown
from xvm.engines.kvm.engine import KvmEngine, install_kick_handler
from xvm.engines.kvm.system import Kvm
from xvm.engines.kvm.vm import VmFd
from xvm.memory.guest_memory import GuestMemory

if not os.path.exists("/dev/kvm"):
    pytest.skip("no /dev/kvm: the kvm engine needs KVM (`xvm doctor` explains how to enable it)",
                allow_module_level=True)

CODE = 0x1000
OUT_F4 = bytes((0xE6, 0xF4))  # out 0xf4, al
KVM_MP_STATE_RUNNABLE = 0


@pytest.fixture
def machine():
    """(memory, vm) with 1 MiB of RAM and two possible vCPUs; closed after the test."""
    memory = GuestMemory.allocate(1 << 20)
    vm = KvmEngine().create_vm(memory, 2)
    yield memory, vm
    vm.close()
    memory.close()


def _real_mode(vcpu, rip: int = CODE, **segments: Segment) -> None:
    sregs = vcpu.get_sregs()
    sregs.cs.base, sregs.cs.selector = 0, 0
    for name, segment in segments.items():
        setattr(sregs, name, segment)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(Regs(rip=rip, rsp=0x8000))


def _start(machine, code: bytes, index: int = 0, **segments: Segment):
    memory, vm = machine
    memory.write(CODE, code)
    vcpu = vm.create_vcpu(index)
    _real_mode(vcpu, **segments)
    return vcpu


def test_out_then_hlt_without_irqchip() -> None:
    # A bare VM (no irqchip): HLT is a userspace exit.
    memory = GuestMemory.allocate(1 << 20)
    with Kvm() as kvm:
        vm = VmFd(kvm.create_vm(), kvm.vcpu_mmap_size())
        try:
            vm.set_tss_address(layout.KVM_TSS_ADDRESS)
            vm.set_user_memory_region(0, 0, memory.size, memory.regions[0].host_address())
            # mov al, 'A'; mov dx, 0x3f8; out dx, al; hlt
            memory.write(CODE, bytes((0xB0, 0x41, 0xBA, 0xF8, 0x03, 0xEE, 0xF4)))
            vcpu = vm.create_vcpu(0)
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags = CODE, 2
            vcpu.set_regs(regs)
            assert vcpu.run() == IoOut(0x3F8, 1, 1, b"A")
            assert isinstance(vcpu.run(), Hlt)
            vcpu.close()
        finally:
            vm.close()
            memory.close()


def test_out_with_irqchip(machine) -> None:
    vcpu = _start(machine, bytes((0xB0, 0x41, 0xBA, 0xF8, 0x03, 0xEE, 0xB0, 0x07)) + OUT_F4)
    assert vcpu.run() == IoOut(0x3F8, 1, 1, b"A")
    assert vcpu.run() == IoOut(0xF4, 1, 1, b"\x07")
    assert vcpu.stats["IoOut"] == 2


def test_in_round_trip(machine) -> None:
    # mov dx, 0x3f8; in ax, dx; out 0xf4, ax  (e5 f4: 16-bit OUT of what IN returned)
    vcpu = _start(machine, bytes((0xBA, 0xF8, 0x03, 0xED, 0xE7, 0xF4)))
    exit_ = vcpu.run()
    assert isinstance(exit_, IoIn)
    assert (exit_.port, exit_.size, exit_.count, len(exit_.data)) == (0x3F8, 2, 1, 2)
    exit_.data[:] = b"\x34\x12"
    assert vcpu.run() == IoOut(0xF4, 2, 1, b"\x34\x12")


def test_mmio_write_and_read_outside_ram(machine) -> None:
    # DS base 0xD0000000 (not RAM): mov al, 0x42; mov [0x10], al; mov al, [0x20]; out 0xf4, al
    data_segment = Segment(base=layout.VIRTIO_MMIO_START, limit=0xFFFF)
    vcpu = _start(machine, bytes((0xB0, 0x42, 0xA2, 0x10, 0x00, 0xA0, 0x20, 0x00)) + OUT_F4, ds=data_segment)
    assert vcpu.run() == MmioWrite(layout.VIRTIO_MMIO_START + 0x10, b"\x42")
    read = vcpu.run()
    assert isinstance(read, MmioRead)
    assert read.address == layout.VIRTIO_MMIO_START + 0x20 and len(read.data) == 1
    read.data[0] = 0x99
    assert vcpu.run() == IoOut(0xF4, 1, 1, b"\x99")


def test_triple_fault_is_shutdown(machine) -> None:
    # Flat 32-bit protected mode with an empty IDT: UD2 -> #UD -> #GP -> #DF -> triple fault.
    flat_code = Segment(base=0, limit=0xFFFFFFFF, selector=0x8, type_=0xB, db=1, g=1)
    memory, vm = machine
    memory.write(CODE, bytes((0x0F, 0x0B)))
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs = flat_code
    for name in ("ds", "es", "ss"):
        setattr(sregs, name, Segment(base=0, limit=0xFFFFFFFF, selector=0x10, type_=0x3, db=1, g=1))
    sregs.cr0 |= 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(Regs(rip=CODE))
    assert isinstance(vcpu.run(), Shutdown)


def test_kick_interrupts_a_spinning_guest(machine) -> None:
    assert install_kick_handler()
    vcpu = _start(machine, bytes((0xEB, 0xFE)))  # jmp $
    timer = threading.Timer(0.05, vcpu.kick)
    timer.start()
    start = time.monotonic()
    exit_ = vcpu.run()
    timer.join()
    assert isinstance(exit_, Interrupted)
    assert time.monotonic() - start < 5
    assert vcpu.get_regs().rip == CODE
    # immediate_exit was cleared: the guest runs again until the next kick.
    timer = threading.Timer(0.05, vcpu.kick)
    timer.start()
    assert isinstance(vcpu.run(), Interrupted)
    timer.join()
    assert vcpu.stats["Interrupted"] == 2


def test_kick_before_run_is_not_lost(machine) -> None:
    vcpu = _start(machine, bytes((0xEB, 0xFE)))
    vcpu.kick()
    assert isinstance(vcpu.run(), Interrupted)


def test_two_vcpus_see_their_apic_ids(machine) -> None:
    # mov eax, 1; cpuid; shr ebx, 24; mov al, bl; out 0xf4, al
    code = bytes((0x66, 0xB8, 1, 0, 0, 0, 0x0F, 0xA2, 0x66, 0xC1, 0xEB, 0x18, 0x88, 0xD8)) + OUT_F4
    boot = _start(machine, code)
    memory, vm = machine
    ap = vm.create_vcpu(1)
    ap.fd.set_mp_state(KVM_MP_STATE_RUNNABLE)  # APs otherwise wait for INIT/SIPI
    _real_mode(ap)
    assert boot.run() == IoOut(0xF4, 1, 1, b"\x00")
    assert ap.run() == IoOut(0xF4, 1, 1, b"\x01")


def test_register_round_trip(machine) -> None:
    vcpu = _start(machine, OUT_F4)
    regs = Regs(rax=1, rbx=2, rcx=3, rdx=4, rsi=5, rdi=6, rsp=7, rbp=8, r8=9, r15=0xFFFF_FFFF_FFFF_FFFF,
                rip=CODE, rflags=0x202)
    vcpu.set_regs(regs)
    assert vcpu.get_regs() == regs
    sregs = vcpu.get_sregs()
    sregs.es = Segment(base=0x12340, limit=0xFFFF, selector=0x1234, type_=3)
    sregs.gdt.base, sregs.gdt.limit = 0x500, 0x1F
    vcpu.set_sregs(sregs)
    back = vcpu.get_sregs()
    assert back.es == sregs.es
    assert (back.gdt.base, back.gdt.limit) == (0x500, 0x1F)
    assert back.cs.base == 0


def test_irq_line_and_msi_sink(machine) -> None:
    from xvm.bus.irq import MsiMessage

    memory, vm = machine
    vm.create_vcpu(0)
    line = vm.irq_line(layout.IRQ_COM1)
    line.set_level(True)
    line.set_level(False)
    vm.msi_sink().signal_msi(MsiMessage(layout.LAPIC_START, 0x30))  # to APIC ID 0
    vm.msi_sink().signal_msi(MsiMessage(layout.LAPIC_START | (7 << 12), 0x30))  # no such vCPU: dropped
    with pytest.raises(Exception, match="IOAPIC pin"):
        vm.irq_line(layout.IOAPIC_PINS)


def test_pvm_fwait_fallback(machine) -> None:
    # fwait; mov al, 7; out 0xf4, al. On PVM the emulator fails on FWAIT and run()
    # executes it in bt; on VT-x/AMD-V it runs natively. Either way the OUT arrives.
    vcpu = _start(machine, bytes((0x9B, 0xB0, 0x07)) + OUT_F4)
    assert vcpu.run() == IoOut(0xF4, 1, 1, b"\x07")
    if machine[1].backend != "pvm":
        assert "pvm_fallback_wait" not in vcpu.stats


def test_smp_on_pvm_is_warned_about(caplog) -> None:
    memory = GuestMemory.allocate(1 << 20)
    with caplog.at_level("WARNING", logger="xvm.engines.kvm.engine"):
        vm = KvmEngine().create_vm(memory, 2)
    try:
        warned = [r for r in caplog.records if "may segfault with 2 vCPUs" in r.getMessage()]
        assert len(warned) == (1 if vm.backend == "pvm" else 0)
    finally:
        vm.close()
        memory.close()


def test_linux_cmdline_hints_follow_the_backend(machine) -> None:
    hints = machine[1].linux_cmdline_hints()
    if machine[1].backend == "pvm":
        assert hints.startswith("noxsave clearcpuid=")
    else:
        assert hints == ""


GDT, IDT, HANDLER = 0x500, 0x600, 0x2000
PML4 = 0x9000


def _protected_mode(machine, code: bytes, handler: bytes, long_mode: bool):
    """Flat ring-0 protected (or long) mode with an IDT whose vector 3 points at `handler`."""
    memory, vm = machine
    code_descriptor = 0x00AF9A000000FFFF if long_mode else 0x00CF9A000000FFFF
    memory.write(GDT, struct.pack("<QQQ", 0, code_descriptor, 0x00CF92000000FFFF))
    if long_mode:
        memory.write(IDT + 3 * 16, struct.pack("<HHBBHII", HANDLER, 0x08, 0, 0x8E, 0, 0, 0))
        # Identity-map the first 2 MiB with one large page.
        memory.write_u64(PML4, (PML4 + 0x1000) | 3)
        memory.write_u64(PML4 + 0x1000, (PML4 + 0x2000) | 3)
        memory.write_u64(PML4 + 0x2000, 0x83)
    else:
        memory.write(IDT + 3 * 8, struct.pack("<HHBBH", HANDLER, 0x08, 0, 0x8E, 0))
    memory.write(CODE, code)
    memory.write(HANDLER, handler)
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs = Segment(base=0, limit=0xFFFFFFFF, selector=0x08, type_=0xB, db=0 if long_mode else 1,
                       l=1 if long_mode else 0, g=1)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(sregs, name, Segment(base=0, limit=0xFFFFFFFF, selector=0x10, type_=0x3, db=1, g=1))
    sregs.gdt = DescriptorTable(GDT, 3 * 8 - 1)
    sregs.idt = DescriptorTable(IDT, 0xFFF)
    sregs.cr0 |= CR0_PE
    if long_mode:
        sregs.cr0 |= CR0_PG
        sregs.cr3, sregs.cr4, sregs.efer = PML4, CR4_PAE, EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)
    vcpu.set_regs(Regs(rip=CODE, rsp=0x8000))
    return vcpu


@pytest.mark.parametrize("long_mode", [False, True], ids=["protected", "long"])
def test_int3_reaches_the_guest_handler_and_returns(machine, long_mode: bool) -> None:
    # int3; mov al, 7; out 0xf4, al -- handler: mov eax, [esp]; out 0xf4, al; iret
    code = bytes((0xCC, 0xB0, 0x07)) + OUT_F4
    iret = bytes((0x48, 0xCF)) if long_mode else bytes((0xCF,))
    vcpu = _protected_mode(machine, code, bytes((0x8B, 0x04, 0x24)) + OUT_F4 + iret, long_mode)
    assert vcpu.run() == IoOut(0xF4, 1, 1, bytes(((CODE + 1) & 0xFF,)))  # #BP frame: address after INT3
    assert vcpu.run() == IoOut(0xF4, 1, 1, b"\x07")
    if machine[1].backend != "pvm":
        assert not [key for key in vcpu.stats if key.startswith("pvm_")]


def test_x87_in_ring0_runs_natively_or_in_the_fallback(machine) -> None:
    # fninit; fld1; fld1; faddp; fistp word [0x3000]; mov al, [0x3000]; out 0xf4, al: 1 + 1 = 2.
    # PVM's emulator has no x87 arithmetic, so there each x87 instruction runs in bt with the
    # FPU state carried through KVM's XSAVE image; elsewhere the CPU runs them.
    code = bytes.fromhex("dbe3d9e8d9e8dec1df1d00300000a000300000") + OUT_F4
    vcpu = _protected_mode(machine, code, bytes((0xF4,)), long_mode=False)
    assert vcpu.run() == IoOut(0xF4, 1, 1, b"\x02")
    if machine[1].backend == "pvm":
        assert vcpu.stats.get("pvm_fallback_faddp") == 1
    else:
        assert not [key for key in vcpu.stats if key.startswith("pvm_")]


def test_vcpu_threads_run_concurrently_and_are_kicked(machine) -> None:
    # Two spinning vCPUs, each in its own thread (KVM_RUN releases the GIL); the
    # main thread kicks both and each run() returns Interrupted.
    memory, vm = machine
    memory.write(CODE, bytes((0xEB, 0xFE)))
    vcpus = [vm.create_vcpu(i) for i in range(2)]
    vcpus[1].fd.set_mp_state(KVM_MP_STATE_RUNNABLE)
    results: dict = {}
    for vcpu in vcpus:
        _real_mode(vcpu)
    threads = [threading.Thread(target=lambda v=v: results.__setitem__(v.index, v.run())) for v in vcpus]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while any(v._thread is None for v in vcpus) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert not results  # both still in the guest while the main thread runs Python
    for vcpu in vcpus:
        vcpu.kick()
    for thread in threads:
        thread.join(5)
    assert all(isinstance(results.get(i), Interrupted) for i in range(2)), results


def test_dirty_log_reports_written_pages(machine) -> None:
    memory, vm = machine
    vm.enable_dirty_log()
    vm.dirty_pages()  # start from a clean log
    # mov al, 1; mov [0x5000], al; out 0xf4, al
    vcpu = _start(machine, bytes((0xB0, 0x01, 0xA2, 0x00, 0x50)) + OUT_F4)
    assert vcpu.run() == IoOut(0xF4, 1, 1, b"\x01")
    assert 0x5000 in vm.dirty_pages()
    assert 0x5000 not in vm.dirty_pages()  # reading the log clears it


@pytest.mark.skipif(not hasattr(os, "eventfd"), reason="os.eventfd needs Python 3.10")
def test_ioeventfd_and_irqfd(machine) -> None:
    memory, vm = machine
    notify = os.eventfd(0, os.EFD_NONBLOCK)
    interrupt = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        vm.register_ioeventfd(notify, 0x600, 1, pio=True)
        vm.register_irqfd(interrupt, 5)
        # mov dx, 0x600; out dx, al (no exit: signals the eventfd); out 0xf4, al
        vcpu = _start(machine, bytes((0xBA, 0x00, 0x06, 0xEE)) + OUT_F4)
        assert vcpu.run().port == 0xF4
        assert os.eventfd_read(notify) == 1
        os.eventfd_write(interrupt, 1)
        vm.unregister_irqfd(interrupt, 5)
        vm.unregister_ioeventfd(notify, 0x600, 1, pio=True)
    finally:
        os.close(notify)
        os.close(interrupt)


def test_close_with_a_live_exit_view(machine) -> None:
    vcpu = _start(machine, bytes((0xBA, 0xF8, 0x03, 0xEC)))  # mov dx, 0x3f8; in al, dx
    exit_ = vcpu.run()
    assert isinstance(exit_, IoIn)
    vcpu.close()  # the machine may still hold exit_.data
    assert vcpu.fd.fd == -1
    vcpu.kick()  # harmless after close


def test_irqfd_on_an_msi_route_sets_the_vector_in_the_lapic(machine) -> None:
    """The kvm path of virtio-pci's MSI-X: an eventfd write on an MSI route's irqfd lands in the LAPIC's IRR."""
    from xvm.bus.irq import MsiMessage
    from xvm.machine.pci_devices import IrqfdMsiSink

    _memory, vm = machine
    vcpu = vm.create_vcpu(0)
    lapic = vcpu.fd.get_lapic()
    regs = bytearray(lapic.regs)
    struct.pack_into("<I", regs, 0xF0, 0x1FF)  # SVR: APIC software-enabled (a disabled APIC drops fixed MSIs)
    lapic.regs[:] = regs
    vcpu.fd.set_lapic(lapic)
    fallback = []

    class Fallback:
        def signal_msi(self, message):
            fallback.append(message)

    sink = IrqfdMsiSink(vm, Fallback())
    try:
        vector = 0x41
        sink.signal_msi(MsiMessage(layout.LAPIC_START, vector))  # fixed, physical destination APIC ID 0
        assert fallback == [] and list(sink.routes) == [layout.IOAPIC_PINS]
        irr = struct.unpack_from("<I", bytes(vcpu.fd.get_lapic().regs), 0x200 + 0x10 * (vector // 32))[0]
        assert irr >> (vector % 32) & 1
    finally:
        sink.close()
