"""A KVM vCPU fd: register access and KVM_RUN decoded into xvm's typed exits.

Mirrors rust-vmm kvm-ioctls `ioctls/vcpu.rs` (`VcpuFd::run() -> VcpuExit`). The
vCPU's `struct kvm_run` is a shared mapping of the fd: KVM fills it on every
exit and reads `immediate_exit` (and, for IN and MMIO reads, the data the VMM
wrote into it) on the next KVM_RUN.

    vcpu = vm.create_vcpu(0)
    exit_ = vcpu.run()          # IoOut(port=0x3f8, size=1, count=1, data=b"A")
"""

from __future__ import annotations

import contextlib
import errno as errno_
import mmap
import os

from xvm.engines.base import (
    FailEntry,
    Hlt,
    InternalError,
    Interrupted,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unhandled,
    VcpuExit,
)
from xvm.engines.kvm import abi, ioctls
from xvm.engines.kvm.ioctls import kvm_ioctl, kvm_run_ioctl
from xvm.errors import KvmError

_RUN_IO_OFFSET = abi.kvm_run.exit.offset  # start of the exit union in kvm_run
_RUN_MMIO_DATA_OFFSET = _RUN_IO_OFFSET + abi.kvm_run_mmio.data.offset


class VcpuFd:
    """An open KVM vCPU and its kvm_run mapping."""

    def __init__(self, fd: int, mmap_size: int) -> None:
        self.fd = fd
        # SAFETY: KVM requires a MAP_SHARED mapping of exactly the size
        # KVM_GET_VCPU_MMAP_SIZE returned (checked >= sizeof(kvm_run)). The ctypes
        # view and memoryview below borrow it; close() drops them before unmapping.
        self._mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._mmap)
        self.kvm_run = abi.kvm_run.from_buffer(self._mmap)
        self._exit = self.kvm_run.exit

    def close(self) -> None:
        if self.fd < 0:
            return
        self._exit = None
        self.kvm_run = None
        self._view.release()
        # An IoIn/MmioRead data view the machine still holds keeps the page mapped;
        # the mapping then goes away with the last such view.
        with contextlib.suppress(BufferError):
            self._mmap.close()
        os.close(self.fd)
        self.fd = -1

    def _call(self, request: int, arg: ioctls.Arg = None) -> int:
        try:
            return kvm_ioctl(self.fd, request, arg)
        except OSError as error:
            raise KvmError(f"{error.strerror}") from error

    # --- registers -----------------------------------------------------------
    def get_regs(self) -> abi.kvm_regs:
        regs = abi.kvm_regs()
        self._call(ioctls.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: abi.kvm_regs) -> None:
        self._call(ioctls.KVM_SET_REGS, regs)

    def get_sregs(self) -> abi.kvm_sregs:
        sregs = abi.kvm_sregs()
        self._call(ioctls.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        self._call(ioctls.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> abi.kvm_fpu:
        fpu = abi.kvm_fpu()
        self._call(ioctls.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: abi.kvm_fpu) -> None:
        self._call(ioctls.KVM_SET_FPU, fpu)

    def get_xsave(self) -> bytes:
        """KVM_GET_XSAVE: the x87/SSE (and later) state as an XSAVE image.

        The fallback reads FPU state here, not with KVM_GET_FPU: on PVM hosts
        KVM_GET_FPU reports MXCSR 0 (and KVM_SET_FPU drops it) while this image
        holds the real value.
        """
        xsave = abi.kvm_xsave()
        self._call(ioctls.KVM_GET_XSAVE, xsave)
        return bytes(xsave)

    def set_xsave(self, image: bytes) -> None:
        self._call(ioctls.KVM_SET_XSAVE, abi.kvm_xsave.from_buffer_copy(image))

    def get_msrs(self, indices: list) -> dict:
        """KVM_GET_MSRS: {index: value} for the MSRs KVM could read (it stops at the first failure)."""
        buffer = abi.msrs_buffer(len(indices))
        for entry, index in zip(buffer.entries, indices):
            entry.index = index
        count = self._call(ioctls.KVM_GET_MSRS, buffer)
        return {buffer.entries[i].index: buffer.entries[i].data for i in range(count)}

    def set_msrs(self, values: dict) -> int:
        """KVM_SET_MSRS: returns how many were set (KVM stops at the first it rejects)."""
        buffer = abi.msrs_buffer(len(values))
        for entry, (index, data) in zip(buffer.entries, values.items()):
            entry.index = index
            entry.data = data
        return self._call(ioctls.KVM_SET_MSRS, buffer)

    def set_cpuid2(self, entries: list) -> None:
        """KVM_SET_CPUID2 with kvm_cpuid_entry2 values (a bytearray-sized buffer, not fcntl's 1 KiB)."""
        buffer = abi.cpuid2_buffer(len(entries))
        for i, entry in enumerate(entries):
            buffer.entries[i] = entry
        self._call(ioctls.KVM_SET_CPUID2, buffer)

    def get_cpuid2(self, capacity: int = 256) -> list:
        buffer = abi.cpuid2_buffer(capacity)
        self._call(ioctls.KVM_GET_CPUID2, buffer)
        return [abi.kvm_cpuid_entry2.from_buffer_copy(buffer.entries[i]) for i in range(buffer.nent)]

    def get_lapic(self) -> abi.kvm_lapic_state:
        lapic = abi.kvm_lapic_state()
        self._call(ioctls.KVM_GET_LAPIC, lapic)
        return lapic

    def set_lapic(self, lapic: abi.kvm_lapic_state) -> None:
        self._call(ioctls.KVM_SET_LAPIC, lapic)

    def get_vcpu_events(self) -> abi.kvm_vcpu_events:
        events = abi.kvm_vcpu_events()
        self._call(ioctls.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: abi.kvm_vcpu_events) -> None:
        self._call(ioctls.KVM_SET_VCPU_EVENTS, events)

    def get_mp_state(self) -> int:
        state = abi.kvm_mp_state()
        self._call(ioctls.KVM_GET_MP_STATE, state)
        return state.mp_state

    def set_mp_state(self, mp_state: int) -> None:
        self._call(ioctls.KVM_SET_MP_STATE, abi.kvm_mp_state(mp_state=mp_state))

    def translate(self, linear_address: int) -> abi.kvm_translation:
        """KVM_TRANSLATE: walk the guest's page tables for a linear address (valid=0 if unmapped)."""
        translation = abi.kvm_translation(linear_address=linear_address)
        self._call(ioctls.KVM_TRANSLATE, translation)
        return translation

    # --- running -------------------------------------------------------------
    def set_immediate_exit(self, value: bool) -> None:
        """kvm_run.immediate_exit: when 1, KVM_RUN returns EINTR before entering the guest."""
        self.kvm_run.immediate_exit = 1 if value else 0

    def run(self) -> VcpuExit:
        """KVM_RUN once and decode why it returned (GIL released while the guest runs)."""
        # kvm_run stays mapped while this object is open (see kvm_run_ioctl's SAFETY).
        error = kvm_run_ioctl(self.fd)
        if error == 0:
            return self.decode_exit()
        if error in (errno_.EINTR, errno_.EAGAIN):
            # A signal (kick) or immediate_exit stopped the entry; the guest state is intact.
            return Interrupted()
        raise KvmError(f"KVM_RUN failed: {os.strerror(error)}")

    def decode_exit(self) -> VcpuExit:
        """Turn kvm_run's exit_reason and exit union into an xvm VcpuExit."""
        reason = self.kvm_run.exit_reason
        exit_ = self._exit
        if reason == abi.KVM_EXIT_IO:
            io = exit_.io
            length = io.size * io.count
            start = io.data_offset
            if start + length > len(self._view):
                # Never trust offsets from a shared page blindly.
                return InternalError(0, f"KVM_EXIT_IO data {start:#x}+{length} outside kvm_run")
            if io.direction == abi.KVM_EXIT_IO_OUT:
                return IoOut(io.port, io.size, io.count, bytes(self._view[start:start + length]))
            return IoIn(io.port, io.size, io.count, self._view[start:start + length])
        if reason == abi.KVM_EXIT_MMIO:
            mmio = exit_.mmio
            length = min(mmio.len, 8)
            if mmio.is_write:
                return MmioWrite(mmio.phys_addr, bytes(mmio.data[:length]))
            return MmioRead(mmio.phys_addr, self._view[_RUN_MMIO_DATA_OFFSET:_RUN_MMIO_DATA_OFFSET + length])
        if reason == abi.KVM_EXIT_HLT:
            return Hlt()
        if reason == abi.KVM_EXIT_INTR:
            return Interrupted()
        if reason == abi.KVM_EXIT_SHUTDOWN:
            return Shutdown("triple fault")
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            fail = exit_.fail_entry
            return FailEntry(fail.hardware_entry_failure_reason, fail.cpu)
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            internal = exit_.internal
            words = " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
            return InternalError(internal.suberror, f"data: {words}" if words else "")
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            event = exit_.system_event
            return SystemEvent(abi.SYSTEM_EVENT_NAMES.get(event.type, f"type {event.type}"))
        return Unhandled(reason, abi.EXIT_REASON_NAMES.get(reason, f"exit {reason}"))
