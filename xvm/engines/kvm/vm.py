"""A KVM VM fd: guest memory slots, in-kernel irqchip and PIT, interrupts, eventfds.

Mirrors rust-vmm kvm-ioctls `ioctls/vm.rs` (`VmFd`). Thin: each method is one
ioctl with its struct filled in; policy (which addresses, which slots) lives in
engine.py.
"""

from __future__ import annotations

import ctypes
import errno
import os

from xvm.engines.kvm import abi, ioctls
from xvm.engines.kvm.ioctls import kvm_ioctl
from xvm.engines.kvm.vcpu import VcpuFd
from xvm.errors import KvmError


class VmFd:
    """An open KVM VM."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self.vcpu_mmap_size = vcpu_mmap_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (per-VM answers, e.g. MAX_VCPUS)."""
        try:
            return kvm_ioctl(self.fd, ioctls.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def _call(self, request: int, arg: ioctls.Arg = None) -> int:
        try:
            return kvm_ioctl(self.fd, request, arg)
        except OSError as error:
            raise KvmError(f"{error.strerror}") from error

    # --- memory ----------------------------------------------------------------
    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: map host memory at a guest-physical range.

        SAFETY: the host range [userspace_addr, +memory_size) must stay mapped until
        the slot is deleted (memory_size 0) or the VM fd is closed; the engine keeps
        GuestMemory open for the VM's lifetime.
        """
        region = abi.kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
            memory_size=memory_size, userspace_addr=userspace_addr,
        )
        self._call(ioctls.KVM_SET_USER_MEMORY_REGION, region)

    def get_dirty_log(self, slot: int, memory_size: int) -> bytes:
        """KVM_GET_DIRTY_LOG: one bit per 4 KiB page of the slot, dirtied since the last call.

        The slot must have been registered with KVM_MEM_LOG_DIRTY_PAGES.
        """
        pages = (memory_size + 0xFFF) // 0x1000
        # The kernel writes whole u64 words of the bitmap.
        bitmap = (ctypes.c_uint64 * ((pages + 63) // 64))()
        # SAFETY: `bitmap` holds ceil(pages/64) u64 words, what KVM writes for the slot;
        # it is alive until the ioctl returns.
        log = abi.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        self._call(ioctls.KVM_GET_DIRTY_LOG, log)
        return bytes(bitmap)

    # --- platform --------------------------------------------------------------
    def set_tss_address(self, address: int) -> None:
        """KVM_SET_TSS_ADDR: three pages KVM (Intel) uses to emulate real mode; must not be RAM."""
        self._call(ioctls.KVM_SET_TSS_ADDR, address)

    def set_identity_map_address(self, address: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the EPT identity map used in unpaged modes."""
        self._call(ioctls.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(address))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC pair, IOAPIC and per-vCPU LAPICs (before any vCPU)."""
        self._call(ioctls.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = abi.KVM_PIT_SPEAKER_DUMMY) -> None:
        """KVM_CREATE_PIT2: in-kernel i8254 on ports 0x40-0x43 (and 0x61 with SPEAKER_DUMMY)."""
        self._call(ioctls.KVM_CREATE_PIT2, abi.kvm_pit_config(flags=flags))

    # --- interrupts ------------------------------------------------------------
    def irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: drive GSI `irq` (PIC and IOAPIC pin) high or low."""
        self._call(ioctls.KVM_IRQ_LINE, abi.kvm_irq_level(irq=irq, level=1 if level else 0))

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI: deliver one MSI; returns how many vCPUs took it (0: none did).

        The guest programs MSI addresses, so one that names no vCPU is the guest's
        business: KVM reports it as -1 (EPERM from kvm_irq_delivery_to_apic), and
        it is counted as not delivered rather than raised.
        """
        msi = abi.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        try:
            return kvm_ioctl(self.fd, ioctls.KVM_SIGNAL_MSI, msi)
        except OSError as error:
            if error.errno == errno.EPERM:
                return 0
            raise KvmError(f"{error.strerror}") from error

    def set_gsi_routing(self, table: ctypes.Structure) -> None:
        """KVM_SET_GSI_ROUTING: replace the whole GSI routing table (irq_routing.routing_table builds one)."""
        self._call(ioctls.KVM_SET_GSI_ROUTING, table)

    def irqfd(self, eventfd: int, gsi: int, resamplefd: int = -1, deassign: bool = False) -> None:
        """KVM_IRQFD: writes to `eventfd` raise GSI `gsi` without a trip through userspace.

        With `resamplefd` the line is level-triggered: KVM signals it on EOI so the
        device can re-assert.
        """
        flags = 0
        if deassign:
            flags |= abi.KVM_IRQFD_FLAG_DEASSIGN
        if resamplefd >= 0:
            flags |= abi.KVM_IRQFD_FLAG_RESAMPLE
        self._call(ioctls.KVM_IRQFD, abi.kvm_irqfd(
            fd=eventfd, gsi=gsi, flags=flags, resamplefd=max(resamplefd, 0)))

    def ioeventfd(
        self, eventfd: int, address: int, length: int, pio: bool,
        datamatch: int = None, deassign: bool = False,  # type: ignore[assignment]
    ) -> None:
        """KVM_IOEVENTFD: a guest write to `address` signals `eventfd` instead of exiting.

        `length` 0 matches writes of any size (MMIO only); `datamatch` restricts
        the match to one written value (a virtqueue index for virtio notify).
        """
        flags = abi.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= abi.KVM_IOEVENTFD_FLAG_DEASSIGN
        self._call(ioctls.KVM_IOEVENTFD, abi.kvm_ioeventfd(
            datamatch=datamatch or 0, addr=address, len=length, fd=eventfd, flags=flags))

    def enable_cap(self, cap: int, *args: int) -> None:
        """KVM_ENABLE_CAP on the VM (e.g. KVM_CAP_X2APIC_API)."""
        request = abi.kvm_enable_cap(cap=cap)
        for i, value in enumerate(args):
            request.args[i] = value
        self._call(ioctls.KVM_ENABLE_CAP, request)

    # --- vCPUs -----------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int) -> VcpuFd:
        """KVM_CREATE_VCPU: vCPU `vcpu_id` (also its initial APIC ID) with its kvm_run mapped."""
        try:
            fd = kvm_ioctl(self.fd, ioctls.KVM_CREATE_VCPU, vcpu_id)
        except OSError as error:
            raise KvmError(f"KVM_CREATE_VCPU {vcpu_id} failed: {error.strerror}") from error
        return VcpuFd(fd, self.vcpu_mmap_size)
