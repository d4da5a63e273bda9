"""Struct layouts and ioctl numbers against the values of linux/kvm.h on x86-64.

The expected numbers were printed by a C program including <linux/kvm.h>
(sizeof/offsetof and the KVM_* macros), so they check the ctypes mirror and the
_IO/_IOR/_IOW/_IOWR arithmetic independently.
"""

from __future__ import annotations

import ctypes

import pytest

from xvm.engines.kvm import abi, ioctls

SIZES = {
    "kvm_run": 2352,
    "kvm_regs": 144,
    "kvm_sregs": 312,
    "kvm_segment": 24,
    "kvm_dtable": 16,
    "kvm_fpu": 416,
    "kvm_msrs": 8,
    "kvm_msr_entry": 16,
    "kvm_cpuid2": 8,
    "kvm_cpuid_entry2": 40,
    "kvm_userspace_memory_region": 32,
    "kvm_irq_level": 8,
    "kvm_pit_config": 64,
    "kvm_lapic_state": 1024,
    "kvm_vcpu_events": 64,
    "kvm_translation": 24,
    "kvm_msi": 32,
    "kvm_irqfd": 32,
    "kvm_ioeventfd": 64,
    "kvm_irq_routing": 8,
    "kvm_irq_routing_entry": 48,
    "kvm_dirty_log": 16,
    "kvm_enable_cap": 104,
}

NUMBERS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_GET_MSR_INDEX_LIST": 0xC004AE02,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_GET_DIRTY_LOG": 0x4010AE42,
    "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
    "KVM_CREATE_IRQCHIP": 0xAE60,
    "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_CREATE_PIT2": 0x4040AE77,
    "KVM_SIGNAL_MSI": 0x4020AEA5,
    "KVM_IRQFD": 0x4020AE76,
    "KVM_IOEVENTFD": 0x4040AE79,
    "KVM_SET_GSI_ROUTING": 0x4008AE6A,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_TRANSLATE": 0xC018AE85,
    "KVM_GET_FPU": 0x81A0AE8C,
    "KVM_SET_FPU": 0x41A0AE8D,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_CPUID2": 0xC008AE91,
    "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_SET_LAPIC": 0x4400AE8F,
    "KVM_GET_VCPU_EVENTS": 0x8040AE9F,
    "KVM_SET_VCPU_EVENTS": 0x4040AEA0,
    "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
}


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_struct_sizes_match_linux_headers(name: str, size: int) -> None:
    assert ctypes.sizeof(getattr(abi, name)) == size


def test_key_offsets() -> None:
    assert abi.kvm_run.immediate_exit.offset == 1
    assert abi.kvm_run.exit_reason.offset == 8
    assert abi.kvm_run.exit.offset + abi.kvm_run_io.data_offset.offset == 40
    assert abi.kvm_run.exit.offset + abi.kvm_run_mmio.len.offset == 48
    assert abi.kvm_run.exit.offset + abi.kvm_run_mmio.is_write.offset == 52
    assert abi.kvm_run.exit.offset + abi.kvm_run_internal.data.offset == 40
    assert abi.kvm_run.s.offset == 304
    assert abi.kvm_sregs.efer.offset == 264
    assert abi.kvm_fpu.mxcsr.offset == 408
    assert abi.kvm_vcpu_events.exception_payload.offset == 56


@pytest.mark.parametrize("name,number", sorted(NUMBERS.items()))
def test_ioctl_numbers_match_linux_headers(name: str, number: int) -> None:
    assert ioctls.IOCTLS[name].number == number
    assert getattr(ioctls, name) == number


def test_ioctl_table_is_grouped_by_fd_kind_and_tagged() -> None:
    kinds = {ioctl.fd_kind for ioctl in ioctls.IOCTLS.values()}
    assert kinds == {"system", "vm", "vcpu"}
    assert ioctls.IOCTLS["KVM_RUN"].fd_kind == "vcpu"
    assert ioctls.IOCTLS["KVM_CREATE_PIT2"].cap == ioctls.KVM_CAP_PIT2
    assert ioctls.IOCTLS["KVM_IRQFD"].cap == ioctls.KVM_CAP_IRQFD
    assert ioctls.IOCTLS["KVM_GET_API_VERSION"].cap is None


def test_capability_numbers() -> None:
    assert (ioctls.KVM_CAP_IRQCHIP, ioctls.KVM_CAP_PIT2, ioctls.KVM_CAP_IOEVENTFD) == (0x0, 0x21, 0x24)
    assert (ioctls.KVM_CAP_IRQFD, ioctls.KVM_CAP_IMMEDIATE_EXIT, ioctls.KVM_CAP_MAX_VCPUS) == (0x20, 0x88, 0x42)
    assert (ioctls.KVM_CAP_NESTED_STATE, ioctls.KVM_CAP_X2APIC_API) == (0x9D, 0x81)


def test_variable_length_buffers() -> None:
    buffer = abi.cpuid2_buffer(100)
    assert buffer.nent == 100
    assert ctypes.sizeof(buffer) == 8 + 100 * 40
    msrs = abi.msrs_buffer(3)
    assert msrs.nmsrs == 3 and ctypes.sizeof(msrs) == 8 + 3 * 16


def test_exit_reason_names() -> None:
    assert abi.EXIT_REASON_NAMES[abi.KVM_EXIT_IO] == "IO"
    assert abi.EXIT_REASON_NAMES[abi.KVM_EXIT_INTERNAL_ERROR] == "INTERNAL_ERROR"
