"""xvm's CPUID adjustments (xvm/arch/x86/cpuid.py) on a synthetic host table."""

from __future__ import annotations

import pytest

from xvm.arch.x86 import cpuid
from xvm.arch.x86.cpuid import CpuidEntry


def _amd_host() -> list:
    # Trimmed from KVM_GET_SUPPORTED_CPUID on an AMD EPYC host.
    return [
        CpuidEntry(0x0, 0, 0, 0x1C, 0x68747541, 0x444D4163, 0x69746E65),  # AuthenticAMD
        CpuidEntry(0x1, 0, 0, 0x00A10F11, 0x00020800, 0x0C202000 | (1 << 26) | (1 << 28), 0x078BFBFF),
        CpuidEntry(0x7, 0, 1, 1, 0x01800002 | (1 << 20) | (1 << 5), 0x104, 0),
        CpuidEntry(0xB, 0, 1, 0, 0, 0, 0),
        CpuidEntry(0xD, 0, 1, 0xE7, 0x980, 0x980, 0),
        CpuidEntry(0xD, 1, 1, 0xF, 0, 0, 0),
        CpuidEntry(0xD, 2, 1, 0x100, 0x240, 0, 0),
        CpuidEntry(0x80000001, 0, 0, 0x00A10F11, 0x40000000, 0x00400393, 0x23D3FBFF),
        CpuidEntry(0x80000008, 0, 0, 0x3030, 0x50020005, 0x7001, 0),
        CpuidEntry(0x8000001E, 0, 0, 0, 0, 0, 0),
        CpuidEntry(0x40000001, 0, 0, 0x01007EFB, 0, 0, 0),
    ]


def _leaf(entries: list, function: int, index: int = 0) -> CpuidEntry:
    matches = [e for e in entries if e.function == function and e.index == index]
    assert len(matches) == 1, (hex(function), index)
    return matches[0]


@pytest.mark.parametrize("index", [0, 1, 3])
def test_apic_id_and_counts(index: int) -> None:
    entries = cpuid.build_cpuid(_amd_host(), index, 4)
    leaf1 = _leaf(entries, 0x1)
    assert leaf1.ebx >> 24 == index
    assert (leaf1.ebx >> 16) & 0xFF == 4
    assert (leaf1.ebx >> 8) & 0xFF == 8
    assert leaf1.edx & cpuid.EDX_HTT
    assert leaf1.ecx & cpuid.ECX_HYPERVISOR
    assert _leaf(entries, 0x80000008).ecx & 0xFF == 3
    assert _leaf(entries, 0x8000001E).eax == index


def test_topology_leaves_regenerated() -> None:
    entries = cpuid.build_cpuid(_amd_host(), 2, 3)
    smt, core, end = (_leaf(entries, 0xB, i) for i in range(3))
    assert (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx) == (0, 1, cpuid.TOPOLOGY_LEVEL_SMT, 2)
    assert (core.eax, core.ebx, core.ecx >> 8, core.edx) == (2, 3, cpuid.TOPOLOGY_LEVEL_CORE, 2)
    assert end.ecx >> 8 == cpuid.TOPOLOGY_LEVEL_INVALID and end.ebx == 0
    assert all(e.flags & cpuid.FLAG_SIGNIFICANT_INDEX for e in (smt, core, end))


def test_single_cpu_clears_htt() -> None:
    entries = cpuid.build_cpuid(_amd_host(), 0, 1)
    assert not _leaf(entries, 0x1).edx & cpuid.EDX_HTT
    assert not _leaf(entries, 0x80000001).ecx & cpuid.ECX_CMP_LEGACY


def test_kvm_signature_added() -> None:
    entries = cpuid.build_cpuid(_amd_host(), 0, 1)
    signature = _leaf(entries, cpuid.LEAF_HYPERVISOR)
    assert (signature.ebx, signature.ecx, signature.edx) == cpuid.KVM_SIGNATURE
    assert signature.eax >= cpuid.LEAF_KVM_FEATURES
    raw = b"".join(v.to_bytes(4, "little") for v in cpuid.KVM_SIGNATURE)
    assert raw == b"KVMKVMKVM\0\0\0"


def test_pvm_mask() -> None:
    host = _amd_host()
    entries = cpuid.build_cpuid(host, 0, 1, cpuid.PVM_MASKED_FEATURES)
    leaf1 = _leaf(entries, 0x1)
    assert not leaf1.ecx & (1 << 26)  # xsave
    assert not leaf1.ecx & (1 << 28)  # avx
    assert not leaf1.ecx & (1 << 13)  # cx16
    leaf7 = _leaf(entries, 0x7)
    assert not leaf7.ebx & (1 << 20)  # smap
    assert not leaf7.ebx & (1 << 5)  # avx2
    assert _leaf(entries, 0xD, 1).eax & 0b1011 == 0  # xsaveopt, xsavec, xsaves
    assert not [e for e in entries if e.function == 0xD and e.index != 1]
    # The input table is left alone.
    assert host[1].ecx & (1 << 26)


def test_pvm_mask_drops_hypercall_pv_features() -> None:
    # The hypercall-based PV features hung SMP Linux on the PVM host.
    host = _amd_host()
    offered = _leaf(host, cpuid.LEAF_KVM_FEATURES).eax
    hypercalls = (1 << 7) | (1 << 11) | (1 << 13)  # PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD
    assert offered & hypercalls == hypercalls
    kvm_features = _leaf(cpuid.build_cpuid(host, 0, 2, cpuid.PVM_MASKED_FEATURES), cpuid.LEAF_KVM_FEATURES).eax
    assert kvm_features == offered & ~hypercalls
    assert _leaf(cpuid.build_cpuid(host, 0, 2), cpuid.LEAF_KVM_FEATURES).eax == offered


def test_no_mask_keeps_features() -> None:
    entries = cpuid.build_cpuid(_amd_host(), 0, 1)
    assert _leaf(entries, 0x1).ecx & (1 << 26)
    assert _leaf(entries, 0xD, 2).eax == 0x100


def test_linux_clearcpuid() -> None:
    chosen = [f for f in cpuid.PVM_MASKED_FEATURES if f.name in ("xsave", "avx", "smap")]
    assert chosen[0].linux_number == 154  # X86_FEATURE_XSAVE (4*32+26)
    # AVX goes with noxsave; SMAP (9*32+20) needs its number.
    assert cpuid.linux_clearcpuid(chosen) == "noxsave clearcpuid=308"
    assert cpuid.linux_clearcpuid([]) == ""
    full = cpuid.linux_clearcpuid(cpuid.PVM_MASKED_FEATURES)
    assert full == "noxsave clearcpuid=141,145,151,288,298,308"  # cx16 pcid popcnt fsgsbase invpcid smap
    assert len(full) < 128


def test_vendor_and_index_check() -> None:
    assert cpuid.vendor(_amd_host()) == cpuid.VENDOR_AMD
    with pytest.raises(ValueError):
        cpuid.build_cpuid(_amd_host(), 2, 2)
