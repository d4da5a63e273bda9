"""KVM ioctl numbers, grouped by the kind of fd they are issued on, and the call itself.

Numbers are computed the way <asm-generic/ioctl.h> does (_IO/_IOR/_IOW/_IOWR
over KVMIO = 0xAE) from the sizes of the abi.py structs, so a wrong struct size
shows up as a wrong number in the unit tests. Each entry names the KVM_CAP_*
that gates it (None: part of the stable base API, KVM_GET_API_VERSION == 12),
mirroring rust-vmm kvm-ioctls' `ioctls/{system,vm,vcpu}.rs`.

All ioctls go through `kvm_ioctl`, a ctypes call of libc's ioctl(2): unlike
fcntl.ioctl it passes unsigned 64-bit integers intact (KVM_SET_TSS_ADDR takes
0xfffbd000, which does not fit fcntl's C int), takes ctypes structs of any size
(fcntl copies immutable buffers into a 1024-byte stack buffer), and releases
the GIL for the duration of the call, so KVM_RUN on one vCPU thread does not
stop the others.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from typing import Optional, Union

from xvm.engines.kvm import abi

# --- <asm-generic/ioctl.h> -------------------------------------------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << _IOC_SIZEBITS)
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _IOW(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOWR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(struct))


# --- capabilities (KVM_CHECK_EXTENSION arguments, linux/kvm.h) ----------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_SYNC_MMU = 16
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_X2APIC_API = 129
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_NESTED_STATE = 157
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_DIRTY_LOG_RING = 192

#: The API version every KVM since Linux 2.6.22 reports (linux/kvm.h KVM_API_VERSION).
KVM_API_VERSION = 12


@dataclass(frozen=True)
class Ioctl:
    """One KVM ioctl: its number, the fd it is issued on, and the capability gating it."""

    name: str
    number: int
    fd_kind: str  # "system" | "vm" | "vcpu"
    cap: Optional[int] = None


_TABLE = (
    # --- system fd (/dev/kvm) ---
    Ioctl("KVM_GET_API_VERSION", _IO(KVMIO, 0x00), "system"),
    Ioctl("KVM_CREATE_VM", _IO(KVMIO, 0x01), "system"),
    Ioctl("KVM_GET_MSR_INDEX_LIST", _IOWR(KVMIO, 0x02, abi.kvm_msr_list), "system"),
    Ioctl("KVM_CHECK_EXTENSION", _IO(KVMIO, 0x03), "system"),
    Ioctl("KVM_GET_VCPU_MMAP_SIZE", _IO(KVMIO, 0x04), "system"),
    Ioctl("KVM_GET_SUPPORTED_CPUID", _IOWR(KVMIO, 0x05, abi.kvm_cpuid2), "system", KVM_CAP_EXT_CPUID),
    # --- VM fd ---
    Ioctl("KVM_CREATE_VCPU", _IO(KVMIO, 0x41), "vm"),
    Ioctl("KVM_GET_DIRTY_LOG", _IOW(KVMIO, 0x42, abi.kvm_dirty_log), "vm"),
    Ioctl("KVM_SET_USER_MEMORY_REGION", _IOW(KVMIO, 0x46, abi.kvm_userspace_memory_region), "vm",
          KVM_CAP_USER_MEMORY),
    Ioctl("KVM_SET_TSS_ADDR", _IO(KVMIO, 0x47), "vm", KVM_CAP_SET_TSS_ADDR),
    Ioctl("KVM_SET_IDENTITY_MAP_ADDR", _IOW(KVMIO, 0x48, ctypes.c_uint64), "vm", KVM_CAP_SET_IDENTITY_MAP_ADDR),
    Ioctl("KVM_CREATE_IRQCHIP", _IO(KVMIO, 0x60), "vm", KVM_CAP_IRQCHIP),
    Ioctl("KVM_IRQ_LINE", _IOW(KVMIO, 0x61, abi.kvm_irq_level), "vm", KVM_CAP_IRQCHIP),
    Ioctl("KVM_SET_GSI_ROUTING", _IOW(KVMIO, 0x6A, abi.kvm_irq_routing), "vm", KVM_CAP_IRQ_ROUTING),
    Ioctl("KVM_IRQFD", _IOW(KVMIO, 0x76, abi.kvm_irqfd), "vm", KVM_CAP_IRQFD),
    Ioctl("KVM_CREATE_PIT2", _IOW(KVMIO, 0x77, abi.kvm_pit_config), "vm", KVM_CAP_PIT2),
    Ioctl("KVM_IOEVENTFD", _IOW(KVMIO, 0x79, abi.kvm_ioeventfd), "vm", KVM_CAP_IOEVENTFD),
    Ioctl("KVM_ENABLE_CAP", _IOW(KVMIO, 0xA3, abi.kvm_enable_cap), "vm"),
    Ioctl("KVM_SIGNAL_MSI", _IOW(KVMIO, 0xA5, abi.kvm_msi), "vm", KVM_CAP_SIGNAL_MSI),
    # --- vCPU fd ---
    Ioctl("KVM_RUN", _IO(KVMIO, 0x80), "vcpu"),
    Ioctl("KVM_GET_REGS", _IOR(KVMIO, 0x81, abi.kvm_regs), "vcpu"),
    Ioctl("KVM_SET_REGS", _IOW(KVMIO, 0x82, abi.kvm_regs), "vcpu"),
    Ioctl("KVM_GET_SREGS", _IOR(KVMIO, 0x83, abi.kvm_sregs), "vcpu"),
    Ioctl("KVM_SET_SREGS", _IOW(KVMIO, 0x84, abi.kvm_sregs), "vcpu"),
    Ioctl("KVM_TRANSLATE", _IOWR(KVMIO, 0x85, abi.kvm_translation), "vcpu"),
    Ioctl("KVM_GET_MSRS", _IOWR(KVMIO, 0x88, abi.kvm_msrs), "vcpu"),
    Ioctl("KVM_SET_MSRS", _IOW(KVMIO, 0x89, abi.kvm_msrs), "vcpu"),
    Ioctl("KVM_GET_FPU", _IOR(KVMIO, 0x8C, abi.kvm_fpu), "vcpu"),
    Ioctl("KVM_SET_FPU", _IOW(KVMIO, 0x8D, abi.kvm_fpu), "vcpu"),
    Ioctl("KVM_GET_LAPIC", _IOR(KVMIO, 0x8E, abi.kvm_lapic_state), "vcpu", KVM_CAP_IRQCHIP),
    Ioctl("KVM_SET_LAPIC", _IOW(KVMIO, 0x8F, abi.kvm_lapic_state), "vcpu", KVM_CAP_IRQCHIP),
    Ioctl("KVM_SET_CPUID2", _IOW(KVMIO, 0x90, abi.kvm_cpuid2), "vcpu", KVM_CAP_EXT_CPUID),
    Ioctl("KVM_GET_CPUID2", _IOWR(KVMIO, 0x91, abi.kvm_cpuid2), "vcpu", KVM_CAP_EXT_CPUID),
    Ioctl("KVM_GET_MP_STATE", _IOR(KVMIO, 0x98, abi.kvm_mp_state), "vcpu", KVM_CAP_MP_STATE),
    Ioctl("KVM_SET_MP_STATE", _IOW(KVMIO, 0x99, abi.kvm_mp_state), "vcpu", KVM_CAP_MP_STATE),
    Ioctl("KVM_GET_VCPU_EVENTS", _IOR(KVMIO, 0x9F, abi.kvm_vcpu_events), "vcpu", KVM_CAP_VCPU_EVENTS),
    Ioctl("KVM_SET_VCPU_EVENTS", _IOW(KVMIO, 0xA0, abi.kvm_vcpu_events), "vcpu", KVM_CAP_VCPU_EVENTS),
    Ioctl("KVM_GET_XSAVE", _IOR(KVMIO, 0xA4, abi.kvm_xsave), "vcpu", KVM_CAP_XSAVE),
    Ioctl("KVM_SET_XSAVE", _IOW(KVMIO, 0xA5, abi.kvm_xsave), "vcpu", KVM_CAP_XSAVE),
)

#: name -> Ioctl, the single table every call site looks numbers up in.
IOCTLS = {ioctl.name: ioctl for ioctl in _TABLE}

# Module-level names for the call sites (KVM_RUN, KVM_GET_REGS, ...).
globals().update({ioctl.name: ioctl.number for ioctl in _TABLE})
KVM_GET_API_VERSION: int
KVM_CREATE_VM: int
KVM_GET_MSR_INDEX_LIST: int
KVM_CHECK_EXTENSION: int
KVM_GET_VCPU_MMAP_SIZE: int
KVM_GET_SUPPORTED_CPUID: int
KVM_CREATE_VCPU: int
KVM_GET_DIRTY_LOG: int
KVM_SET_USER_MEMORY_REGION: int
KVM_SET_TSS_ADDR: int
KVM_SET_IDENTITY_MAP_ADDR: int
KVM_CREATE_IRQCHIP: int
KVM_IRQ_LINE: int
KVM_SET_GSI_ROUTING: int
KVM_IRQFD: int
KVM_CREATE_PIT2: int
KVM_IOEVENTFD: int
KVM_ENABLE_CAP: int
KVM_SIGNAL_MSI: int
KVM_RUN: int
KVM_GET_REGS: int
KVM_SET_REGS: int
KVM_GET_SREGS: int
KVM_SET_SREGS: int
KVM_TRANSLATE: int
KVM_GET_MSRS: int
KVM_SET_MSRS: int
KVM_GET_FPU: int
KVM_SET_FPU: int
KVM_GET_LAPIC: int
KVM_SET_LAPIC: int
KVM_SET_CPUID2: int
KVM_GET_CPUID2: int
KVM_GET_MP_STATE: int
KVM_SET_MP_STATE: int
KVM_GET_VCPU_EVENTS: int
KVM_SET_VCPU_EVENTS: int
KVM_GET_XSAVE: int
KVM_SET_XSAVE: int


# --- the call -------------------------------------------------------------------------
# SAFETY: libc's ioctl(int, unsigned long, ...) is declared with three fixed
# arguments; on x86-64 SysV a variadic callee reads them from the same registers
# (libffi also sets AL, the vector-register count variadic callees expect).
# ctypes.CDLL (not PyDLL) releases the GIL around the call; use_errno captures
# errno in a thread-local copy that ctypes.get_errno() reads back.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int

Arg = Union[int, ctypes.Structure, ctypes.Array, ctypes._SimpleCData, None]


def kvm_ioctl(fd: int, request: int, arg: Arg = None) -> int:
    """ioctl(fd, request, arg): an int is passed by value, a ctypes object by reference.

    Returns the ioctl's non-negative result; raises OSError with errno on failure.
    SAFETY: a ctypes object passed here is owned by the caller and alive for the
    whole call; its size is the one encoded in `request` (asserted in abi.py).
    """
    if arg is None:
        pointer = None
    elif isinstance(arg, int):
        pointer = arg  # by value, as the full unsigned long
    else:
        pointer = ctypes.addressof(arg)
    result = _ioctl(fd, request, pointer)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{_name_of(request)}: {os.strerror(errno)}")
    return result


def _name_of(request: int) -> str:
    for ioctl in _TABLE:
        if ioctl.number == request:
            return ioctl.name
    return f"ioctl {request:#x}"

_KVM_RUN = IOCTLS["KVM_RUN"].number


def kvm_run_ioctl(fd: int) -> int:
    """KVM_RUN on a vCPU fd: 0 on a normal exit, else the errno (EINTR after a kick).

    Kept separate from kvm_ioctl because it is the hot path and EINTR is not an error.
    SAFETY: KVM_RUN takes no argument; the kernel only touches the vCPU's kvm_run
    mapping, which the caller keeps mapped.
    """
    if _ioctl(fd, _KVM_RUN, None) < 0:
        return ctypes.get_errno()
    return 0
