"""The /dev/kvm system fd: API version, capabilities, host CPUID/MSR lists, VM creation.

Mirrors rust-vmm kvm-ioctls `ioctls/system.rs` (`Kvm`). Opening /dev/kvm is
where most users first meet a broken setup, so the errors here carry the fix.
"""

from __future__ import annotations

import ctypes
import errno as errno_
import os

from xvm.engines.kvm import abi, ioctls
from xvm.engines.kvm.ioctls import kvm_ioctl
from xvm.errors import KvmError

KVM_DEVICE = "/dev/kvm"

#: KVM_GET_SUPPORTED_CPUID fails with E2BIG when the buffer is too small; this is
#: KVM_MAX_CPUID_ENTRIES in arch/x86/kvm/cpuid.c (256), the most it can return.
MAX_CPUID_ENTRIES = 256
#: Room for KVM_GET_MSR_INDEX_LIST; the kernel reports the real count on E2BIG.
MAX_MSR_INDICES = 1024


def open_failure_message(path: str, error: OSError) -> str:
    """A one-line message for a failed open of /dev/kvm, naming the fix."""
    if error.errno == errno_.ENOENT:
        return (
            f"{path} does not exist: load KVM (`sudo modprobe kvm_intel` or `sudo modprobe kvm_amd`) "
            "and enable VT-x/AMD-V in the firmware, or use --engine bt"
        )
    if error.errno in (errno_.EACCES, errno_.EPERM):
        return (
            f"{path} is not accessible to this user: add yourself to the kvm group "
            "(`sudo usermod -aG kvm $USER`, then log in again) or `sudo chmod 666 /dev/kvm`, or use --engine bt"
        )
    return f"cannot open {path}: {error.strerror}; check `xvm doctor`"


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise KvmError(open_failure_message(path, error)) from error
        try:
            version = self.api_version()
        except OSError as error:
            os.close(self.fd)
            raise KvmError(f"{path} is not a KVM device ({error.strerror})") from error
        if version != ioctls.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError(
                f"KVM API version {version} is not the stable version {ioctls.KVM_API_VERSION}: update the host kernel"
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def api_version(self) -> int:
        return kvm_ioctl(self.fd, ioctls.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else 1 or a cap-specific value (e.g. MAX_VCPUS)."""
        try:
            return kvm_ioctl(self.fd, ioctls.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def vcpu_mmap_size(self) -> int:
        """Size of the kvm_run mapping of each vCPU fd (at least one page)."""
        size = kvm_ioctl(self.fd, ioctls.KVM_GET_VCPU_MMAP_SIZE)
        if size < ctypes.sizeof(abi.kvm_run):
            raise KvmError(f"KVM reports a vCPU mmap size of {size}, smaller than struct kvm_run")
        return size

    def get_supported_cpuid(self) -> list:
        """KVM_GET_SUPPORTED_CPUID: the CPUID entries KVM can present, as kvm_cpuid_entry2 copies."""
        buffer = abi.cpuid2_buffer(MAX_CPUID_ENTRIES)
        try:
            # SAFETY: buffer holds nent=MAX_CPUID_ENTRIES entries; KVM writes at most nent
            # and stores the real count back into nent.
            kvm_ioctl(self.fd, ioctls.KVM_GET_SUPPORTED_CPUID, buffer)
        except OSError as error:
            raise KvmError(f"KVM_GET_SUPPORTED_CPUID failed: {error.strerror}") from error
        return [abi.kvm_cpuid_entry2.from_buffer_copy(buffer.entries[i]) for i in range(buffer.nent)]

    def get_msr_index_list(self) -> list:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves/restores for a vCPU."""
        buffer = abi.msr_list_buffer(MAX_MSR_INDICES)
        # SAFETY: room for nmsrs indices after the header; the kernel checks nmsrs first.
        kvm_ioctl(self.fd, ioctls.KVM_GET_MSR_INDEX_LIST, buffer)
        return list(buffer.indices[: buffer.nmsrs])

    def create_vm(self) -> int:
        """KVM_CREATE_VM (machine type 0): the new VM fd, owned by the caller."""
        try:
            return kvm_ioctl(self.fd, ioctls.KVM_CREATE_VM, 0)
        except OSError as error:
            raise KvmError(f"KVM_CREATE_VM failed: {error.strerror} (is another hypervisor holding VT-x/AMD-V?)") \
                from error
