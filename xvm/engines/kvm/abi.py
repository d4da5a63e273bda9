"""ctypes mirrors of the linux/kvm.h (and asm/kvm.h, x86-64) structures xvm uses.

Field names and order follow the kernel headers exactly (model: rust-vmm
kvm-bindings, x86_64/bindings.rs), so a struct can be handed to an ioctl as is.
Every struct's size and its subtle offsets are asserted at import time: a
mismatch here would let the kernel read or write past a Python buffer, so the
module refuses to load rather than run with a wrong layout.

SAFETY (whole module): these are plain-old-data layouts with no pointers that
Python owns, except `kvm_dirty_log.dirty_bitmap`, whose buffer the caller
keeps alive for the duration of the ioctl (see VmFd.get_dirty_log).
"""

from __future__ import annotations

import ctypes
from ctypes import (
    c_int32,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
)

# --- exit reasons (kvm_run.exit_reason) -------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30

#: Names for stats and "unhandled exit" messages.
EXIT_REASON_NAMES = {
    value: name[len("KVM_EXIT_"):]
    for name, value in dict(globals()).items()
    if name.startswith("KVM_EXIT_")
}

# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1  # the in-kernel instruction emulator gave up
KVM_INTERNAL_ERROR_SIMUL_EX = 2  # exception while delivering an exception
KVM_INTERNAL_ERROR_DELIVERY_EV = 3  # exit while delivering an event (e.g. a #PF on the IDT)
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

# kvm_run.system_event.type
SYSTEM_EVENT_NAMES = {1: "shutdown", 2: "reset", 3: "crash", 4: "wakeup", 5: "suspend", 6: "sev-term"}

# kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# kvm_cpuid_entry2.flags
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # (sic, the header's spelling)

# kvm_vcpu_events.flags
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2
KVM_VCPUEVENT_VALID_SHADOW = 0x4
KVM_VCPUEVENT_VALID_SMM = 0x8
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10

# kvm_irqfd.flags / kvm_ioeventfd.flags
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

# kvm_irq_routing_entry.type
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2

#: KVM_NR_INTERRUPTS (asm/kvm.h): size of the interrupt bitmap in kvm_sregs.
KVM_NR_INTERRUPTS = 256
#: KVM_APIC_REG_SIZE (asm/kvm.h): the LAPIC register page handed to GET/SET_LAPIC.
KVM_APIC_REG_SIZE = 0x400


class _Struct(ctypes.Structure):
    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, *_ in self._fields_)
        return f"{type(self).__name__}({fields})"


# --- kvm_run and its exit union ---------------------------------------------
class kvm_run_io(_Struct):
    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),  # relative to the start of kvm_run
    ]


class kvm_run_mmio(_Struct):
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class kvm_run_fail_entry(_Struct):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class kvm_run_internal(_Struct):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_system_event(_Struct):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_debug_exit_arch(_Struct):
    _fields_ = [("exception", c_uint32), ("pad", c_uint32), ("pc", c_uint64), ("dr6", c_uint64), ("dr7", c_uint64)]


class kvm_run_debug(_Struct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class kvm_run_hw(_Struct):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class kvm_run_msr(_Struct):
    _fields_ = [
        ("error", c_uint8),
        ("pad", c_uint8 * 7),
        ("reason", c_uint32),
        ("index", c_uint32),
        ("data", c_uint64),
    ]


class kvm_run_exit(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("io", kvm_run_io),
        ("debug", kvm_run_debug),
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("msr", kvm_run_msr),
        ("padding", c_uint8 * 256),
    ]


class kvm_run(_Struct):
    """The per-vCPU page shared with the kernel (mmap of the vCPU fd)."""

    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", kvm_run_exit),  # the anonymous union in the header
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", c_uint8 * 2048),
    ]


# --- registers ----------------------------------------------------------------
class kvm_regs(_Struct):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
        )
    ]


class kvm_segment(_Struct):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(_Struct):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class kvm_sregs(_Struct):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(_Struct):
    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),  # abridged FXSAVE tag word
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_xsave(_Struct):
    """The guest's XSAVE area in the standard (non-compacted) format; the first 512 bytes are FXSAVE's."""

    _fields_ = [("region", c_uint32 * 1024)]


#: Offset of XSTATE_BV in the XSAVE header, and its x87 and SSE bits (SDM Vol. 1 13.4.2).
XSAVE_XSTATE_BV_OFFSET = 512
XFEATURE_MASK_FPSSE = 0x3


class kvm_msr_entry(_Struct):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(_Struct):
    """Header of a variable-length MSR list; entries follow (see msrs_buffer)."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class kvm_msr_list(_Struct):
    """Header of KVM_GET_MSR_INDEX_LIST; u32 indices follow."""

    _fields_ = [("nmsrs", c_uint32)]


class kvm_cpuid_entry2(_Struct):
    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(_Struct):
    """Header of a variable-length CPUID table; entries follow (see cpuid2_buffer)."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


class kvm_lapic_state(_Struct):
    _fields_ = [("regs", c_uint8 * KVM_APIC_REG_SIZE)]


class kvm_vcpu_events_exception(_Struct):
    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("has_error_code", c_uint8),
        ("pending", c_uint8),
        ("error_code", c_uint32),
    ]


class kvm_vcpu_events_interrupt(_Struct):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class kvm_vcpu_events_nmi(_Struct):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class kvm_vcpu_events_smi(_Struct):
    _fields_ = [("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8), ("latched_init", c_uint8)]


class kvm_vcpu_events(_Struct):
    _fields_ = [
        ("exception", kvm_vcpu_events_exception),
        ("interrupt", kvm_vcpu_events_interrupt),
        ("nmi", kvm_vcpu_events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", kvm_vcpu_events_smi),
        ("triple_fault_pending", c_uint8),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


class kvm_translation(_Struct):
    _fields_ = [
        ("linear_address", c_uint64),
        ("physical_address", c_uint64),
        ("valid", c_uint8),
        ("writeable", c_uint8),
        ("usermode", c_uint8),
        ("pad", c_uint8 * 5),
    ]


class kvm_mp_state(_Struct):
    _fields_ = [("mp_state", c_uint32)]


# --- VM-level structures -------------------------------------------------------
class kvm_userspace_memory_region(_Struct):
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_irq_level(_Struct):
    # The header's union {irq; status} is kept as `irq` (status is the same u32 on return).
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class kvm_pit_config(_Struct):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


#: kvm_pit_config.flags: the PIT's speaker port 0x61 is handled in the kernel too.
KVM_PIT_SPEAKER_DUMMY = 1


class kvm_msi(_Struct):
    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("flags", c_uint32),
        ("devid", c_uint32),
        ("pad", c_uint8 * 12),
    ]


class kvm_irqfd(_Struct):
    _fields_ = [
        ("fd", c_uint32),
        ("gsi", c_uint32),
        ("flags", c_uint32),
        ("resamplefd", c_uint32),
        ("pad", c_uint8 * 16),
    ]


class kvm_ioeventfd(_Struct):
    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


class kvm_irq_routing_irqchip(_Struct):
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class kvm_irq_routing_msi(_Struct):
    _fields_ = [("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32), ("devid", c_uint32)]


class kvm_irq_routing_entry_u(ctypes.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", c_uint32 * 8)]


class kvm_irq_routing_entry(_Struct):
    _fields_ = [
        ("gsi", c_uint32),
        ("type", c_uint32),
        ("flags", c_uint32),
        ("pad", c_uint32),
        ("u", kvm_irq_routing_entry_u),
    ]


class kvm_irq_routing(_Struct):
    """Header of a variable-length routing table; entries follow."""

    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


class kvm_dirty_log(_Struct):
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", c_uint64)]


class kvm_enable_cap(_Struct):
    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4), ("pad", c_uint8 * 64)]


# --- variable-length helpers --------------------------------------------------
def cpuid2_buffer(count: int) -> ctypes.Structure:
    """A kvm_cpuid2 header followed by `count` entries, in one ctypes object.

    SAFETY: the kernel reads/writes nent entries after the header; the array is
    sized from the same `count` that goes into nent, and the object outlives the
    ioctl because the caller holds it.
    """

    class kvm_cpuid2_n(_Struct):
        _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * count)]

    buffer = kvm_cpuid2_n()
    buffer.nent = count
    return buffer


def msrs_buffer(count: int) -> ctypes.Structure:
    """A kvm_msrs header followed by `count` kvm_msr_entry (same SAFETY as cpuid2_buffer)."""

    class kvm_msrs_n(_Struct):
        _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * count)]

    buffer = kvm_msrs_n()
    buffer.nmsrs = count
    return buffer


def msr_list_buffer(count: int) -> ctypes.Structure:
    """A kvm_msr_list header followed by room for `count` u32 indices."""

    class kvm_msr_list_n(_Struct):
        _fields_ = [("nmsrs", c_uint32), ("indices", c_uint32 * count)]

    buffer = kvm_msr_list_n()
    buffer.nmsrs = count
    return buffer


def irq_routing_buffer(count: int) -> ctypes.Structure:
    """A kvm_irq_routing header followed by `count` entries."""

    class kvm_irq_routing_n(_Struct):
        _fields_ = [("nr", c_uint32), ("flags", c_uint32), ("entries", kvm_irq_routing_entry * count)]

    buffer = kvm_irq_routing_n()
    buffer.nr = count
    return buffer


# --- layout checks (values from linux/kvm.h on x86-64, checked with offsetof) --
_SIZES = {
    kvm_run: 2352,
    kvm_run_exit: 256,
    kvm_regs: 144,
    kvm_sregs: 312,
    kvm_segment: 24,
    kvm_dtable: 16,
    kvm_fpu: 416,
    kvm_xsave: 4096,
    kvm_msrs: 8,
    kvm_msr_entry: 16,
    kvm_msr_list: 4,
    kvm_cpuid2: 8,
    kvm_cpuid_entry2: 40,
    kvm_userspace_memory_region: 32,
    kvm_irq_level: 8,
    kvm_pit_config: 64,
    kvm_lapic_state: 1024,
    kvm_vcpu_events: 64,
    kvm_translation: 24,
    kvm_mp_state: 4,
    kvm_msi: 32,
    kvm_irqfd: 32,
    kvm_ioeventfd: 64,
    kvm_irq_routing: 8,
    kvm_irq_routing_entry: 48,
    kvm_dirty_log: 16,
    kvm_enable_cap: 104,
}
for _cls, _size in _SIZES.items():
    assert ctypes.sizeof(_cls) == _size, (_cls.__name__, ctypes.sizeof(_cls), _size)

# Offsets the exit decoder and the kick path rely on.
assert kvm_run.immediate_exit.offset == 1
assert kvm_run.exit_reason.offset == 8
assert kvm_run.cr8.offset == 16
assert kvm_run.exit.offset == 32
assert kvm_run.kvm_valid_regs.offset == 288
assert kvm_run.s.offset == 304
assert kvm_run_io.data_offset.offset == 8  # kvm_run offset 40
assert kvm_run_mmio.data.offset == 8 and kvm_run_mmio.len.offset == 16 and kvm_run_mmio.is_write.offset == 20
assert kvm_run_internal.data.offset == 8  # kvm_run offset 40
assert kvm_run_fail_entry.cpu.offset == 8
assert kvm_sregs.gdt.offset == 192 and kvm_sregs.cr0.offset == 224
assert kvm_sregs.efer.offset == 264 and kvm_sregs.apic_base.offset == 272
assert kvm_sregs.interrupt_bitmap.offset == 280
assert kvm_fpu.fcw.offset == 128 and kvm_fpu.last_ip.offset == 136
assert kvm_fpu.xmm.offset == 152 and kvm_fpu.mxcsr.offset == 408
assert kvm_vcpu_events.sipi_vector.offset == 16 and kvm_vcpu_events.flags.offset == 20
assert kvm_vcpu_events.smi.offset == 24 and kvm_vcpu_events.reserved.offset == 29
assert kvm_vcpu_events.exception_has_payload.offset == 55 and kvm_vcpu_events.exception_payload.offset == 56
assert kvm_translation.physical_address.offset == 8 and kvm_translation.valid.offset == 16
assert kvm_cpuid_entry2.flags.offset == 8 and kvm_cpuid_entry2.eax.offset == 12
assert kvm_ioeventfd.addr.offset == 8 and kvm_ioeventfd.len.offset == 16
assert kvm_ioeventfd.fd.offset == 20 and kvm_ioeventfd.flags.offset == 24
assert kvm_irqfd.resamplefd.offset == 12
assert kvm_msi.flags.offset == 12 and kvm_msi.devid.offset == 16
assert kvm_irq_routing_entry.u.offset == 16
assert kvm_dirty_log.dirty_bitmap.offset == 8
assert kvm_enable_cap.args.offset == 8
