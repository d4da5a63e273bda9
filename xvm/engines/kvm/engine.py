"""The kvm engine: xvm's Engine/VmBackend/Vcpu contract on top of Linux KVM.

    engine = KvmEngine()
    vm = engine.create_vm(memory, cpus=2)        # irqchip + PIT + RAM slots
    vcpu = vm.create_vcpu(0)                      # CPUID, FPU, MSRs, LINT0/1 set
    vcpu.set_regs(...); vcpu.set_sregs(...)
    exit_ = vcpu.run()                            # IoOut, MmioRead, Shutdown, ...

Setup follows Firecracker's vstate (vm.rs, vcpu.rs): in-kernel irqchip and
PIT, TSS and identity-map pages just below 4 GiB, one memory slot per RAM
region, and per-vCPU CPUID, boot MSRs, FPU control words and LAPIC LINT pins.

On a PVM backend (kvm_pvm, no VT-x/AMD-V) KVM's instruction emulator fails on
some instructions a guest executes (IRET to ring 3 or v86 mode, INT3, FWAIT,
x87/SSE arithmetic); when KVM reports such an emulation failure, and only
then, run() executes that one instruction in the bt engine's interpreter
(fallback.py), so real VT-x/AMD-V hosts take the standard path. CPUID masks
what PVM cannot deliver.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import struct
import threading
from collections.abc import Mapping
from typing import Optional

from xvm.arch.x86 import cpuid as cpuid_table
from xvm.arch.x86 import layout, msr
from xvm.arch.x86.regs import (
    CR0_MP,
    CR0_PE,
    CR0_TS,
    RFLAGS_AC,
    RFLAGS_AF,
    RFLAGS_CF,
    RFLAGS_DF,
    RFLAGS_FIXED,
    RFLAGS_ID,
    RFLAGS_IF,
    RFLAGS_IOPL,
    RFLAGS_NT,
    RFLAGS_OF,
    RFLAGS_PF,
    RFLAGS_RF,
    RFLAGS_SF,
    RFLAGS_TF,
    RFLAGS_VIF,
    RFLAGS_VIP,
    RFLAGS_VM,
    RFLAGS_ZF,
    Regs,
    SpecialRegs,
)
from xvm.bus.irq import MsiMessage
from xvm.devices.clock import HostClock
from xvm.engines.base import InternalError, Interrupted, Shutdown, VcpuExit, exit_name
from xvm.engines.kvm import abi, host, ioctls, irq_routing
from xvm.engines.kvm.convert import (  # noqa: F401 - segment_*: part of this module's interface
    regs_from_kvm,
    regs_to_kvm,
    segment_from_kvm,
    segment_to_kvm,
    sregs_from_kvm,
    sregs_to_kvm,
)
from xvm.engines.kvm.fallback import FallbackRefused, FallbackStep
from xvm.engines.kvm.system import Kvm
from xvm.engines.kvm.timers import DeviceTimers
from xvm.engines.kvm.vcpu import VcpuFd
from xvm.engines.kvm.vm import VmFd
from xvm.errors import GuestMemoryError, KvmError
from xvm.memory import GuestMemory

log = logging.getLogger(__name__)

#: The signal that kicks a vCPU thread out of KVM_RUN (Firecracker uses SIGRTMIN too).
KICK_SIGNAL = getattr(signal, "SIGRTMIN", signal.SIGUSR2)

# Local APIC register offsets (SDM Vol. 3A 11.5.1) and LVT delivery modes.
APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7
_APIC_DELIVERY_MODE_MASK = 0x700

#: x87 control word after FNINIT, and MXCSR at reset (all exceptions masked).
FPU_FCW = 0x37F
FPU_MXCSR = 0x1F80

OPCODE_IRET = 0xCF
OPCODE_FWAIT = 0x9B
#: x87 status word: error summary, set while an unmasked x87 exception is pending (SDM Vol. 1 8.1.3).
FSW_ES = 0x80
#: RFLAGS bits a 32-bit IRET loads from the stack at CPL 0 (SDM Vol. 2A, IRET operation).
_IRET_FLAGS = (
    RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_TF | RFLAGS_IF | RFLAGS_DF | RFLAGS_OF
    | RFLAGS_IOPL | RFLAGS_NT | RFLAGS_RF | RFLAGS_AC | RFLAGS_VIF | RFLAGS_VIP | RFLAGS_ID
)
#: Longest x86 instruction; what an emulation-failure report shows.
MAX_INSTRUCTION_LENGTH = 15

_kick_handler_installed = False
_kick_handler_lock = threading.Lock()


def install_kick_handler() -> bool:
    """Install the (no-op) KICK_SIGNAL handler; only possible on the main thread.

    The handler's job is to exist: a thread in KVM_RUN that receives a handled
    signal returns EINTR, while an unhandled real-time signal would kill the
    process. Returns whether the handler is in place.
    """
    global _kick_handler_installed
    with _kick_handler_lock:
        if not _kick_handler_installed and threading.current_thread() is threading.main_thread():
            signal.signal(KICK_SIGNAL, lambda signum, frame: None)
            _kick_handler_installed = True
        return _kick_handler_installed


class KvmIrqLine:
    """An IrqLine onto a GSI of the in-kernel PIC/IOAPIC (KVM_IRQ_LINE)."""

    def __init__(self, vm: VmFd, gsi: int) -> None:
        self._vm = vm
        self.gsi = gsi

    def set_level(self, high: bool) -> None:
        self._vm.irq_line(self.gsi, high)


class KvmMsiSink:
    """An MsiSink delivering through KVM_SIGNAL_MSI."""

    def __init__(self, vm: VmFd) -> None:
        self._vm = vm

    def signal_msi(self, message: MsiMessage) -> None:
        self._vm.signal_msi(message.address, message.data)


class KvmEngine:
    """Hardware-assisted (or PVM) execution through /dev/kvm."""

    name = "kvm"

    def __init__(self, device: str = "/dev/kvm") -> None:
        self.device = device

    def create_vm(self, memory: GuestMemory, cpus: int) -> KvmVm:
        return KvmVm(Kvm(self.device), memory, cpus)


class KvmVm:
    """One KVM VM: in-kernel irqchip and PIT, guest RAM registered, vCPUs on demand."""

    has_irqchip = True

    def __init__(self, kvm: Kvm, memory: GuestMemory, cpus: int) -> None:
        self.kvm = kvm
        self.memory = memory
        self.cpus = cpus
        self.vcpus: list = []
        self.fd: Optional[VmFd] = None
        #: Ticks the Python-modelled timed devices (the RTC); the PIT and LAPICs are KVM's.
        self.timers = DeviceTimers(HostClock())
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        kvm = self.kvm
        missing = host.required_caps_missing(kvm)
        if missing:
            raise KvmError(host.missing_caps_message(missing))
        max_vcpus = kvm.check_extension(ioctls.KVM_CAP_MAX_VCPUS) or kvm.check_extension(
            ioctls.KVM_CAP_NR_VCPUS)
        if not 1 <= self.cpus <= max(max_vcpus, 1):
            raise KvmError(f"{self.cpus} vCPUs requested but this KVM allows 1 to {max_vcpus}: lower --cpus")
        self.backend = host.detect_backend()
        if self.backend == "pvm" and self.cpus > 1:
            # With --cpus 2 busybox processes of the default guest read 0 from their freshly set-up
            # thread-local storage (fs:-0x90 in glibc's __ctype_init) and die of SIGSEGV, several per 20
            # pipelines; never with 1 vCPU or with isolcpus=1. Not the PVM fallback (none runs after kernel
            # start once FWAIT is stepped over), not vCPU threads moving between host cores, not PV TLB
            # flush (README).
            log.warning("PVM host: SMP Linux boots, but its user processes may segfault with %d vCPUs "
                        "(PVM hosts only, README); use --cpus 1 or --engine bt where that matters", self.cpus)
        self.masked_features = cpuid_table.PVM_MASKED_FEATURES if self.backend == "pvm" else ()
        self.supported_cpuid = [
            cpuid_table.CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in kvm.get_supported_cpuid()
        ]
        self.fd = VmFd(kvm.create_vm(), kvm.vcpu_mmap_size())
        # Order as in Firecracker's vm setup: TSS and identity map before any vCPU,
        # irqchip before the PIT and before vCPUs (their LAPICs are created with them).
        self.fd.set_tss_address(layout.KVM_TSS_ADDRESS)
        if kvm.check_extension(ioctls.KVM_CAP_SET_IDENTITY_MAP_ADDR):
            self.fd.set_identity_map_address(layout.KVM_IDENTITY_MAP_ADDRESS)
        self.fd.create_irqchip()
        self.fd.create_pit2()
        self._register_memory(flags=0)

    def _register_memory(self, flags: int) -> None:
        for slot, region in enumerate(self.memory.regions):
            # SAFETY: GuestMemory keeps each mapping open until memory.close(), which the
            # machine calls only after this VM is closed.
            self.fd.set_user_memory_region(slot, region.guest_base, region.size, region.host_address(), flags)

    # --- VmBackend -------------------------------------------------------------
    def create_vcpu(self, index: int) -> KvmVcpu:
        if not 0 <= index < self.cpus:
            raise KvmError(f"vCPU index {index} out of range for a {self.cpus}-vCPU VM")
        vcpu = KvmVcpu(self, index, self.fd.create_vcpu(index))
        self.vcpus.append(vcpu)
        return vcpu

    def irq_line(self, irq: int) -> KvmIrqLine:
        if not 0 <= irq < layout.IOAPIC_PINS:
            raise KvmError(f"IRQ {irq} is not an IOAPIC pin (0-{layout.IOAPIC_PINS - 1})")
        return KvmIrqLine(self.fd, irq)

    def msi_sink(self) -> KvmMsiSink:
        return KvmMsiSink(self.fd)

    def add_timer(self, device: object) -> object:
        """Tick `device` (tick/next_deadline) at its deadlines; returns the wrapper for the bus (timers.py)."""
        return self.timers.add(device)

    def close(self) -> None:
        self.timers.close()
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus = []
        if self.fd is not None:
            self.fd.close()
            self.fd = None
        self.kvm.close()

    def linux_cmdline_hints(self) -> str:
        """Words to append to a Linux guest's command line on this backend ("" on VT-x/AMD-V).

        PVM does not apply KVM_SET_CPUID2 to CPUID executed in guest kernel mode, so the
        masked features must also be switched off from inside ("noxsave clearcpuid=...").
        """
        return cpuid_table.linux_clearcpuid(self.masked_features)

    # --- for virtio and snapshots ----------------------------------------------
    def register_irqfd(self, eventfd: int, gsi: int, resamplefd: int = -1) -> None:
        """Signal GSI `gsi` whenever `eventfd` is written (level-triggered with `resamplefd`)."""
        self.fd.irqfd(eventfd, gsi, resamplefd)

    def unregister_irqfd(self, eventfd: int, gsi: int) -> None:
        self.fd.irqfd(eventfd, gsi, deassign=True)

    def set_msi_routes(self, routes: Mapping[int, MsiMessage]) -> None:
        """Make each GSI of `routes` (24 and up) an MSI route, next to the irqchip's default routes.

        An irqfd registered on such a GSI then injects its MSI (KVM_SET_GSI_ROUTING).
        """
        self.fd.set_gsi_routing(irq_routing.routing_table(routes))

    def register_ioeventfd(
        self, eventfd: int, address: int, length: int, pio: bool = False, datamatch: Optional[int] = None
    ) -> None:
        """Turn guest writes to `address` into `eventfd` signals (no vCPU exit)."""
        self.fd.ioeventfd(eventfd, address, length, pio, datamatch)

    def unregister_ioeventfd(
        self, eventfd: int, address: int, length: int, pio: bool = False, datamatch: Optional[int] = None
    ) -> None:
        self.fd.ioeventfd(eventfd, address, length, pio, datamatch, deassign=True)

    def enable_dirty_log(self, enabled: bool = True) -> None:
        """Re-register every RAM slot with (or without) KVM_MEM_LOG_DIRTY_PAGES."""
        self._register_memory(abi.KVM_MEM_LOG_DIRTY_PAGES if enabled else 0)

    def dirty_pages(self) -> list:
        """Guest-physical addresses of pages written since the last call (dirty log must be on)."""
        pages = []
        for slot, region in enumerate(self.memory.regions):
            bitmap = self.fd.get_dirty_log(slot, region.size)
            for byte_index, byte in enumerate(bitmap):
                if byte:
                    for bit in range(8):
                        if byte >> bit & 1:
                            pages.append(region.guest_base + (byte_index * 8 + bit) * layout.PAGE_SIZE)
        return pages


class KvmVcpu:
    """One KVM vCPU configured for xvm, implementing the engines.base.Vcpu contract.

    `stats` counts exits by kind ("IoOut", "MmioRead", ...) and the instructions
    the PVM fallback ran, by mnemonic ("pvm_fallback_iret", ...), and the
    same-segment IRETDs of its fast path ("pvm_iret32"); bench and
    --stats print it.
    """

    def __init__(self, vm: KvmVm, index: int, fd: VcpuFd) -> None:
        self.vm = vm
        self.index = index
        self.fd = fd
        self.stats: dict = {}
        self._thread: Optional[int] = None
        if not install_kick_handler():
            log.warning("vCPU %d created off the main thread before install_kick_handler(): "
                        "kick() can then only stop it between exits", index)
        self._configure()

    def _configure(self) -> None:
        vm = self.vm
        entries = cpuid_table.build_cpuid(vm.supported_cpuid, self.index, vm.cpus, vm.masked_features)
        self.fd.set_cpuid2([
            abi.kvm_cpuid_entry2(function=e.function, index=e.index, flags=e.flags,
                                 eax=e.eax, ebx=e.ebx, ecx=e.ecx, edx=e.edx)
            for e in entries
        ])
        fpu = abi.kvm_fpu(fcw=FPU_FCW, mxcsr=FPU_MXCSR)
        self.fd.set_fpu(fpu)
        self._set_boot_msrs()
        self._set_lint()

    def _set_boot_msrs(self) -> None:
        values = msr.boot_msrs()
        done = self.fd.set_msrs(values)
        if done != len(values):
            # KVM stops at the first MSR it rejects; name it instead of guessing later.
            index = list(values)[done]
            raise KvmError(f"KVM rejected MSR {index:#x} while setting up vCPU {self.index}: check `xvm doctor`")

    def _set_lint(self) -> None:
        """LINT0 = ExtINT (the PIC's INTR), LINT1 = NMI, as a PC's BIOS leaves them (Firecracker interrupts.rs)."""
        lapic = self.fd.get_lapic()
        regs = bytearray(lapic.regs)
        for offset, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
            value = struct.unpack_from("<I", regs, offset)[0]
            struct.pack_into("<I", regs, offset, (value & ~_APIC_DELIVERY_MODE_MASK) | (mode << 8))
        lapic.regs[:] = regs
        self.fd.set_lapic(lapic)

    # --- registers -----------------------------------------------------------
    def get_regs(self) -> Regs:
        return regs_from_kvm(self.fd.get_regs())

    def set_regs(self, regs: Regs) -> None:
        self.fd.set_regs(regs_to_kvm(regs))

    def get_sregs(self) -> SpecialRegs:
        return sregs_from_kvm(self.fd.get_sregs())

    def set_sregs(self, sregs: SpecialRegs) -> None:
        # Start from KVM's copy so fields xvm does not model (the pending-interrupt
        # bitmap) keep their values.
        kvm_sregs = self.fd.get_sregs()
        sregs_to_kvm(sregs, kvm_sregs)
        self.fd.set_sregs(kvm_sregs)

    # --- running -------------------------------------------------------------
    def run(self) -> VcpuExit:
        """Run until an exit the machine must see; PVM emulation gaps are filled here (fallback.py)."""
        self._thread = threading.get_ident()
        stats = self.stats
        while True:
            exit_ = self.fd.run()
            if type(exit_) is Interrupted:
                # The kick has been delivered; the next run() enters the guest again.
                self.fd.set_immediate_exit(False)
            elif (type(exit_) is InternalError and exit_.suberror == abi.KVM_INTERNAL_ERROR_EMULATION):
                workaround, exit_ = self._handle_emulation_failure(exit_)
                if workaround:
                    stats[workaround] = stats.get(workaround, 0) + 1
                    continue
            name = exit_name(exit_)
            stats[name] = stats.get(name, 0) + 1
            return exit_

    def _handle_emulation_failure(self, failure: InternalError) -> tuple:
        """Run the instruction KVM's emulator gave up on in bt's interpreter; else explain.

        Returns (stats key, None) when the guest may simply be re-entered,
        ("", Shutdown) when delivering the instruction's fault triple-faulted,
        or ("", InternalError) naming the instruction bytes, RIP and why.
        INT3 needs no case of its own: bt delivers #BP through the guest's IDT
        (the frame KVM's injection would build). A same-segment IRETD and an
        FWAIT with nothing pending keep fast paths (_iret32, _fwait); bt
        performs every other kind of IRET and the faulting FWAITs.
        """
        regs = self.fd.get_regs()
        sregs = self.fd.get_sregs()
        code = self._read_linear((sregs.cs.base + regs.rip) & 0xFFFFFFFFFFFFFFFF, MAX_INSTRUCTION_LENGTH)
        if code[:1] == bytes((OPCODE_IRET,)) and self._iret32(regs, sregs):
            return "pvm_iret32", None
        if code[:1] == bytes((OPCODE_FWAIT,)) and self._fwait(regs, sregs):
            return "pvm_fwait", None
        step = FallbackStep.load(self.fd)
        try:
            if not step.execute(self.vm.memory):
                return "", Shutdown("triple fault")
            step.store(self.fd)
        except FallbackRefused as refused:
            why = f"the fallback refused it: {refused}"
        else:
            if step.v86_steps:
                self.stats["pvm_fallback_v86_steps"] = self.stats.get("pvm_fallback_v86_steps", 0) + step.v86_steps
            return f"pvm_fallback_{step.mnemonic}", None
        shown = code.hex(" ") if code else "unreadable"
        detail = f"KVM could not emulate the instruction at RIP={regs.rip:#x} (bytes {shown}); {why}"
        if failure.detail:
            detail += f"; {failure.detail}"
        return "", InternalError(failure.suberror, detail)

    def _iret32(self, regs: abi.kvm_regs, sregs: abi.kvm_sregs) -> bool:
        """Perform a 32-bit protected-mode IRET to the same code segment, as SDM Vol. 2A IRET does.

        PVM's emulator fails on IRETD (IRETQ works). This is the fast path of
        the one emulation failure that comes at interrupt rates (the return of
        every interrupt handler of a 32-bit guest): the general fallback costs
        1-3 ms a step here, longer than a 200 us LAPIC timer period, which
        livelocked tests/guests/timer_irq. Only the simple case: 32-bit code
        and stack, no task return (NT), no return to virtual-8086 mode, CS
        unchanged (no privilege change, no descriptor load); anything else
        goes to the fallback.
        """
        if not (sregs.cr0 & CR0_PE) or sregs.cs.l or not sregs.cs.db or not sregs.ss.db:
            return False
        if regs.rflags & (RFLAGS_NT | RFLAGS_VM):
            return False
        esp = regs.rsp & 0xFFFFFFFF
        frame = self._read_linear((sregs.ss.base + esp) & 0xFFFFFFFF, 12)
        if len(frame) < 12:
            return False
        eip, cs, eflags = struct.unpack("<III", frame)
        if (cs & 0xFFFF) != sregs.cs.selector or eflags & RFLAGS_VM:
            return False
        cpl = sregs.ss.dpl
        iopl = (regs.rflags & RFLAGS_IOPL) >> 12
        changeable = _IRET_FLAGS
        if cpl > 0:
            changeable &= ~(RFLAGS_IOPL | RFLAGS_VIF | RFLAGS_VIP)
        if cpl > iopl:
            changeable &= ~RFLAGS_IF
        regs.rflags = (regs.rflags & ~changeable) | (eflags & changeable) | RFLAGS_FIXED
        regs.rip = eip
        regs.rsp = (regs.rsp & ~0xFFFFFFFF) | ((esp + 12) & 0xFFFFFFFF)
        self.fd.set_regs(regs)
        # IRET ends NMI blocking (SDM Vol. 3A 6.7.1); set_vcpu_events always applies nmi.masked.
        events = self.fd.get_vcpu_events()
        events.nmi.masked = 0
        events.flags = 0
        self.fd.set_vcpu_events(events)
        return True

    def _fwait(self, regs: abi.kvm_regs, sregs: abi.kvm_sregs) -> bool:
        """Step over an FWAIT that has nothing to report (SDM Vol. 2B WAIT/FWAIT).

        FWAIT faults only with CR0.MP and CR0.TS both set (#NM) or while an
        unmasked x87 exception is pending (FSW.ES: #MF); otherwise it does
        nothing. Linux executes one in fpu__drop() on every process exit, which
        PVM's emulator cannot run: skipping it here touches only RIP
        (KVM_SET_REGS), where the general fallback would rewrite segments,
        MSRs and XSAVE state for a no-op. Faulting cases, and single-stepping
        (TF), go to the fallback.
        """
        if sregs.cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS or regs.rflags & RFLAGS_TF:
            return False
        fsw = int.from_bytes(self.fd.get_xsave()[2:4], "little")  # FXSAVE image: FCW, then FSW
        if fsw & FSW_ES:
            return False
        if sregs.cs.l:
            regs.rip += 1
        else:
            # IP/EIP wraps within the code segment's operand size.
            regs.rip = (regs.rip + 1) & (0xFFFFFFFF if sregs.cs.db else 0xFFFF)
        self.fd.set_regs(regs)
        return True

    def _read_linear(self, linear: int, length: int) -> bytes:
        """Up to `length` bytes at a guest linear address, stopping where it is not mapped RAM."""
        data = b""
        while len(data) < length:
            address = linear + len(data)
            translation = self.fd.translate(address)
            if not translation.valid:
                break
            page_left = layout.PAGE_SIZE - (address & (layout.PAGE_SIZE - 1))
            count = min(length - len(data), page_left)
            try:
                data += self.vm.memory.read(translation.physical_address, count)
            except GuestMemoryError:
                break
        return data

    def kick(self) -> None:
        """Make the current or next run() return Interrupted; callable from any thread."""
        # immediate_exit first: if the thread is not in KVM_RUN yet, its next entry
        # returns EINTR at once, so a kick is never lost.
        if self.fd.fd < 0:
            return
        self.fd.set_immediate_exit(True)
        thread = self._thread
        if thread is not None and _kick_handler_installed:
            # The vCPU thread may have exited; immediate_exit then covers a later run().
            with contextlib.suppress(ProcessLookupError):
                signal.pthread_kill(thread, KICK_SIGNAL)

    def close(self) -> None:
        self.fd.close()
