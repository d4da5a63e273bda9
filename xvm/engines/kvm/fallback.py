"""Execute one instruction in xvm's software CPU when KVM's emulator gives up (PVM hosts).

On a PVM backend (kvm_pvm, no VT-x/AMD-V) guest ring-0 and real-mode code
runs in KVM's instruction emulator, which lacks instructions a guest may use:
IRET to ring 3 or to virtual-8086 mode, INT3 in protected mode, FWAIT,
x87/SSE arithmetic. KVM then stops the vCPU *before* the instruction with
KVM_EXIT_INTERNAL_ERROR (suberror EMULATION). The bt engine's interpreter
implements that ISA, so the vCPU's architectural state is copied into a bt
CpuState, exactly one instruction is executed over the same guest RAM (a
fault it raises is delivered through the guest's IDT as the CPU would, SDM
Vol. 3 6.15), and the state is written back before KVM_RUN is entered again.

    step = FallbackStep.load(fd)          # KVM_GET_REGS/SREGS/XSAVE/MSRS -> CpuState
    if step.execute(memory):              # one instruction (or its fault) in bt; False: triple fault
        step.store(fd)                    # changed state back to KVM

Virtual-8086 mode is the one place where more than one instruction runs
here: PVM's KVM_SET_REGS drops RFLAGS.VM (observed: IRET to v86 mode written
back with VM=1 reads back without it), so once an instruction enters v86 mode
the fallback keeps executing until the guest leaves it (a #GP, an interrupt
to the monitor) or V86_STEP_LIMIT instructions pass.

Only the error path comes here, so VT-x/AMD-V hosts never do. What the
fallback cannot carry it refuses with FallbackRefused (the VM then stops with
the usual InternalError report): port I/O and MMIO (their devices belong to
the machine's dispatcher and KVM would have exited for them anyway), and
debug-register writes (KVM keeps them through KVM_SET_DEBUGREGS, not here).
"""

from __future__ import annotations

from typing import Optional

from xvm.arch.x86 import msr
from xvm.arch.x86.regs import RFLAGS_VM
from xvm.engines.bt import interrupts
from xvm.engines.bt.cpu import execute_one, fetch_decode
from xvm.engines.bt.faults import UD, GuestFault, TripleFault
from xvm.engines.bt.mmu import Mmu
from xvm.engines.bt.ops.system import TSC_OFFSET, read_tsc
from xvm.engines.bt.state import MODE_REAL, MODE_V86, CpuState
from xvm.engines.kvm import abi
from xvm.engines.kvm.convert import (
    FXSAVE_SIZE,
    fpu_from_fxsave,
    fpu_to_fxsave,
    regs_from_kvm,
    regs_to_kvm,
    sregs_from_kvm,
    sregs_to_kvm,
)
from xvm.memory import GuestMemory

IA32_TSC = msr.MSR_IA32_TSC
#: MSRs an instruction may read or write besides EFER and FS/GS base (in kvm_sregs): the
#: SYSCALL/SYSENTER set, SWAPGS's partner, RDTSCP's TSC_AUX, PAT. IA32_TSC is read too, first.
CARRIED_MSRS = (
    msr.MSR_STAR, msr.MSR_LSTAR, msr.MSR_CSTAR, msr.MSR_SYSCALL_MASK, msr.MSR_KERNEL_GS_BASE,
    msr.MSR_IA32_SYSENTER_CS, msr.MSR_IA32_SYSENTER_ESP, msr.MSR_IA32_SYSENTER_EIP, msr.MSR_IA32_CR_PAT,
    msr.MSR_TSC_AUX,
)

#: kvm_vcpu_events.interrupt.shadow values (arch/x86/include/uapi/asm/kvm.h).
KVM_X86_SHADOW_INT_MOV_SS = 1
KVM_X86_SHADOW_INT_STI = 2
KVM_MP_STATE_HALTED = 3
#: Instructions of virtual-8086 code the fallback runs before it gives up (interrupts wait meanwhile).
V86_STEP_LIMIT = 100_000


class FallbackRefused(Exception):
    """The instruction needs something the fallback does not carry (the message says what)."""


class _NoDevices:
    """Port I/O and MMIO sink of the fallback: it refuses them (see module docstring)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def read(self, where: int, size: int) -> int:
        raise FallbackRefused(f"{self.kind} read at {where:#x}")

    def write(self, where: int, size: int, value: int) -> None:
        raise FallbackRefused(f"{self.kind} write at {where:#x}")


def cpu_state_from_kvm(kvm_regs: abi.kvm_regs, kvm_sregs: abi.kvm_sregs, xsave: bytes, msrs: dict) -> CpuState:
    """A bt CpuState holding the vCPU's architectural state.

    `xsave` is KVM_GET_XSAVE's image; `msrs` maps index -> value (IA32_TSC too).
    """
    cpu = CpuState()
    cpu.set_regs(regs_from_kvm(kvm_regs))
    cpu.set_sregs(sregs_from_kvm(kvm_sregs))
    if cpu.mode not in (MODE_REAL, MODE_V86):
        # KVM's CPL is SS.DPL (it differs from CS.DPL in conforming code; SDM Vol. 3 5.5).
        cpu.cpl = kvm_sregs.ss.dpl
    fpu_from_fxsave(xsave[:FXSAVE_SIZE], cpu)
    cpu.msrs = {index: value for index, value in msrs.items() if index != IA32_TSC}
    # bt's TSC is icount + offset (ops/system.read_tsc): start it at KVM's value.
    cpu.msrs[TSC_OFFSET] = msrs.get(IA32_TSC, 0) - cpu.icount
    return cpu


def changed_msrs(cpu: CpuState, before: dict) -> dict:
    """MSRs whose value the instruction changed (IA32_TSC by value, not bt's offset key)."""
    changed = {}
    for index, value in cpu.msrs.items():
        if index == TSC_OFFSET:
            continue
        if before.get(index) != value:
            changed[index] = value
    if cpu.msrs[TSC_OFFSET] != before.get(IA32_TSC, 0):  # the offset as loaded (icount 0)
        changed[IA32_TSC] = read_tsc(cpu)
    return changed


# --- one step ---------------------------------------------------------------------------------
class FallbackStep:
    """One instruction of a KVM vCPU run in bt: load, execute, store (module docstring)."""

    def __init__(self, kvm_regs: abi.kvm_regs, kvm_sregs: abi.kvm_sregs, xsave: bytes, msrs: dict) -> None:
        self.kvm_sregs = kvm_sregs
        self.msrs = dict(msrs)
        self.xsave = xsave
        self.cpu = cpu_state_from_kvm(kvm_regs, kvm_sregs, xsave, msrs)
        self._dr_before = list(self.cpu.dr)
        #: The instruction's mnemonic ("iret", "int3", ...), or "fault" when it could not be fetched.
        self.mnemonic = ""
        #: The vector delivered when the (last) instruction faulted.
        self.fault: Optional[int] = None
        #: Instructions run after the first because it entered virtual-8086 mode (module docstring).
        self.v86_steps = 0

    @classmethod
    def load(cls, fd) -> FallbackStep:
        """Read a stopped vCPU's state (a VcpuFd) for one fallback step."""
        msrs = fd.get_msrs([IA32_TSC, *CARRIED_MSRS])
        return cls(fd.get_regs(), fd.get_sregs(), fd.get_xsave(), msrs)

    def execute(self, memory: GuestMemory) -> bool:
        """Run the instruction at CS:RIP; False when even #DF could not be delivered (triple fault).

        Raises FallbackRefused for what the fallback does not carry; the vCPU's
        KVM state is then untouched.
        """
        cpu = self.cpu
        mmu = Mmu(memory, cpu, _NoDevices("MMIO"))
        ports = _NoDevices("port")
        try:
            self.mnemonic = self._step(cpu, mmu, ports) or "fault"
            while cpu.rflags & RFLAGS_VM:
                if self.v86_steps == V86_STEP_LIMIT:
                    raise FallbackRefused(f"virtual-8086 code ran {V86_STEP_LIMIT} instructions without leaving "
                                          "v86 mode, which PVM cannot run itself (it drops RFLAGS.VM)")
                self.v86_steps += 1
                self._step(cpu, mmu, ports)
        except TripleFault:
            return False
        if cpu.dr != self._dr_before:
            raise FallbackRefused(f"{self.mnemonic} changes a debug register")
        return True

    def _step(self, cpu: CpuState, mmu: Mmu, ports: _NoDevices) -> str:
        """One instruction, or the delivery of its fault; returns its mnemonic ("" if it could not be fetched)."""
        mnemonic = ""
        try:
            mnemonic = fetch_decode(cpu, mmu).op.mnemonic
            execute_one(cpu, mmu, ports)
        except GuestFault as fault:
            if fault.vector == UD:
                # An instruction bt does not implement either: #UD would be a lie to a guest whose
                # CPUID may advertise it, so report it instead.
                raise FallbackRefused(f"bt's interpreter has no {mnemonic or 'such instruction'} either (#UD)") \
                    from None
            self.fault = fault.vector
            interrupts.deliver_fault(cpu, mmu, fault, cpu.rip)
        return mnemonic

    def store(self, fd) -> None:
        """Write the changed state back to the vCPU (a VcpuFd)."""
        cpu = self.cpu
        changed = changed_msrs(cpu, self.msrs)
        if changed and fd.set_msrs(changed) != len(changed):
            # First, so that a refusal leaves the rest of KVM's state as it was.
            raise FallbackRefused(f"KVM rejected an MSR that {self.mnemonic} wrote ({sorted(changed)})")
        fd.set_regs(regs_to_kvm(cpu.get_regs()))
        sregs = cpu.get_sregs()
        sregs.apic_base = self.kvm_sregs.apic_base
        sregs_to_kvm(sregs, self.kvm_sregs)
        fd.set_sregs(self.kvm_sregs)
        image = fpu_to_fxsave(cpu, self.xsave)
        if image != self.xsave[:FXSAVE_SIZE]:
            xsave = bytearray(self.xsave)
            xsave[:FXSAVE_SIZE] = image
            # Mark x87 and SSE state as in use, or KVM_SET_XSAVE would take them as in their init state.
            bv = int.from_bytes(xsave[abi.XSAVE_XSTATE_BV_OFFSET:abi.XSAVE_XSTATE_BV_OFFSET + 8], "little")
            xsave[abi.XSAVE_XSTATE_BV_OFFSET:abi.XSAVE_XSTATE_BV_OFFSET + 8] = (
                bv | abi.XFEATURE_MASK_FPSSE).to_bytes(8, "little")
            fd.set_xsave(bytes(xsave))
        shadow = cpu.interrupt_shadow and self.fault is None
        if shadow or self.mnemonic == "iret":
            events = fd.get_vcpu_events()
            events.flags = 0
            if shadow:
                # STI and MOV SS/POP SS hold off interrupts for one instruction (SDM Vol. 2 STI, MOV).
                events.flags = abi.KVM_VCPUEVENT_VALID_SHADOW
                events.interrupt.shadow = KVM_X86_SHADOW_INT_STI if self.mnemonic == "sti" \
                    else KVM_X86_SHADOW_INT_MOV_SS
            if self.mnemonic == "iret" and self.fault is None:
                # IRET ends NMI blocking (SDM Vol. 3 6.7.1); set_vcpu_events always applies nmi.masked.
                events.nmi.masked = 0
            fd.set_vcpu_events(events)
        if cpu.halted:
            fd.set_mp_state(KVM_MP_STATE_HALTED)
