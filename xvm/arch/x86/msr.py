"""Model-specific registers xvm names, and the values a vCPU starts with.

The boot set follows Firecracker's arch/x86_64/msr.rs (`create_boot_msr_entries`):
the SYSCALL/SYSENTER MSRs cleared so the guest kernel installs its own entry
points, the TSC at zero, fast string operations enabled, and the MTRRs on with
write-back as the default type (without it Linux treats all of RAM as
uncacheable and runs very slowly).
"""

from __future__ import annotations

# Architectural MSRs (SDM Vol. 4, Table 2-2).
MSR_IA32_TSC = 0x10
MSR_IA32_APICBASE = 0x1B
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRRdefType = 0x2FF
MSR_IA32_CR_PAT = 0x277
MSR_EFER = 0xC0000080
MSR_STAR = 0xC0000081  # SYSCALL CS/SS selectors
MSR_LSTAR = 0xC0000082  # 64-bit SYSCALL entry
MSR_CSTAR = 0xC0000083  # compatibility-mode SYSCALL entry
MSR_SYSCALL_MASK = 0xC0000084  # RFLAGS bits cleared on SYSCALL (SFMASK)
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102  # swapped in by SWAPGS
MSR_TSC_AUX = 0xC0000103

# KVM paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst).
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
MSR_KVM_WALL_CLOCK_NEW = 0x4B564D00

#: IA32_MISC_ENABLE bit 0: fast-string operations (REP MOVS/STOS in bulk).
MSR_IA32_MISC_ENABLE_FAST_STRING = 1 << 0
#: IA32_MTRR_DEF_TYPE: bit 11 enables the MTRRs, bits 7:0 the default memory type.
MTRR_ENABLE = 1 << 11
MTRR_MEM_TYPE_WB = 0x6


def boot_msrs() -> dict:
    """{index: value} written to every vCPU before it first runs."""
    return {
        MSR_IA32_SYSENTER_CS: 0,
        MSR_IA32_SYSENTER_ESP: 0,
        MSR_IA32_SYSENTER_EIP: 0,
        MSR_STAR: 0,
        MSR_CSTAR: 0,
        MSR_KERNEL_GS_BASE: 0,
        MSR_SYSCALL_MASK: 0,
        MSR_LSTAR: 0,
        MSR_IA32_TSC: 0,
        MSR_IA32_MISC_ENABLE: MSR_IA32_MISC_ENABLE_FAST_STRING,
        MSR_MTRRdefType: MTRR_ENABLE | MTRR_MEM_TYPE_WB,
    }
