"""The CPUID table xvm presents to each vCPU.

Starts from what the engine can deliver (on KVM: KVM_GET_SUPPORTED_CPUID) and
applies xvm's adjustments, in the spirit of Firecracker's cpuid normalization
(src/vmm/src/cpu_config/x86_64/cpuid/normalize.rs):

- topology: the vCPU's APIC ID in leaf 1 EBX[31:24], leaves 0xB/0x1F (x2APIC
  topology, SDM Vol. 2A CPUID) and AMD's 0x8000001E; logical-processor counts
  in leaves 1, 4 and 0x80000008 consistent with the number of vCPUs, one
  thread per core, one package;
- the hypervisor bit (leaf 1 ECX[31]) and KVM's signature leaf 0x40000000
  ("KVMKVMKVM"), which Linux's kvm_guest code (arch/x86/kernel/kvm.c) looks
  for before it uses kvmclock and the paravirtual features of 0x40000001;
- masking of features the backend cannot deliver (`masked`): each FeatureBit
  names the leaf, register and bit, the Linux X86_FEATURE number (for
  clearcpuid= when the guest kernel does not honour the table everywhere), and
  why it is masked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

#: CPUID entry flag: the sub-leaf (ECX input) selects the entry (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
FLAG_SIGNIFICANT_INDEX = 1

LEAF_VENDOR = 0x0
LEAF_FEATURES = 0x1
LEAF_CACHE_PARAMS = 0x4  # Intel deterministic cache parameters
LEAF_EXTENDED_FEATURES = 0x7
LEAF_TOPOLOGY = 0xB  # x2APIC topology
LEAF_XSAVE = 0xD
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_HYPERVISOR = 0x40000000
LEAF_KVM_FEATURES = 0x40000001
LEAF_EXT_FEATURES = 0x80000001
LEAF_EXT_ADDRESS_SIZES = 0x80000008
LEAF_AMD_EXT_APIC_ID = 0x8000001E

#: Leaf 1 EBX: initial APIC ID, logical processor count, CLFLUSH line size (in 8-byte units).
EBX_APIC_ID_SHIFT = 24
EBX_LOGICAL_COUNT_SHIFT = 16
EBX_CLFLUSH_SHIFT = 8
#: Leaf 1 EDX[28]: HTT, "EBX[23:16] is valid" (must be set for Linux to read the count).
EDX_HTT = 1 << 28
#: Leaf 1 ECX[31]: running under a hypervisor.
ECX_HYPERVISOR = 1 << 31
#: Leaf 0x80000001 ECX[1]: CmpLegacy, AMD's "multi-core, HTT is not hyperthreading".
ECX_CMP_LEGACY = 1 << 1
#: Leaf 0xB/0x1F ECX[15:8] level types.
TOPOLOGY_LEVEL_INVALID = 0
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2

#: "KVMKVMKVM\0\0\0" as EBX, ECX, EDX of leaf 0x40000000 (Documentation/virt/kvm/x86/cpuid.rst).
KVM_SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x0000004D)

#: Vendor strings of leaf 0 (EBX, EDX, ECX order spells them).
VENDOR_INTEL = "GenuineIntel"
VENDOR_AMD = "AuthenticAMD"


@dataclass
class CpuidEntry:
    """One CPUID leaf/sub-leaf as the guest reads it."""

    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


@dataclass(frozen=True)
class FeatureBit:
    """A CPUID feature flag: where it lives, its Linux number and a reason to mask it."""

    name: str  # as in /proc/cpuinfo
    leaf: int
    subleaf: int
    register: str  # "eax" | "ebx" | "ecx" | "edx"
    bit: int
    linux_word: int  # arch/x86/include/asm/cpufeatures.h word holding this register; -1: not a Linux cpufeature
    reason: str = ""
    #: Linux clears it by itself once XSAVE is off (arch/x86/kernel/cpu/cpuid-deps.c).
    xsave_dependent: bool = False

    @property
    def linux_number(self) -> int:
        """X86_FEATURE_* value (word*32+bit), what `clearcpuid=` takes on Linux 6.1."""
        return self.linux_word * 32 + self.bit


_NO_XSAVE = "XSAVE state handling (XRSTOR) fails in the PVM instruction emulator"
_NEEDS_XSAVE = "needs XSAVE-managed state, which is masked"
#: Observed on PVM with --cpus 2: the AP sat on `vmcall` in kvm_hypercall4(KVM_HC_SEND_IPI) for good
#: while the BSP spun on a lock it held ("x86: Booting SMP configuration:" was the last line).
_NO_HYPERCALL = "uses a KVM hypercall (VMCALL/VMMCALL), which PVM does not serve"


def _feature(name: str, leaf: int, subleaf: int, register: str, bit: int, word: int, reason: str) -> FeatureBit:
    dependent = reason == _NEEDS_XSAVE or (reason == _NO_XSAVE and name != "xsave")
    return FeatureBit(name, leaf, subleaf, register, bit, word, reason, dependent)

#: What a PVM backend (kvm_pvm: shadow paging and instruction emulation, no
#: VT-x/AMD-V) cannot deliver to a guest kernel. See docs GUEST.md: its emulator
#: fails on XRSTOR, CMPXCHG16B and CLAC; PCID is not virtualized.
PVM_MASKED_FEATURES = (
    _feature("xsave", 0x1, 0, "ecx", 26, 4, _NO_XSAVE),
    _feature("osxsave", 0x1, 0, "ecx", 27, 4, _NO_XSAVE),
    _feature("avx", 0x1, 0, "ecx", 28, 4, _NEEDS_XSAVE),
    _feature("fma", 0x1, 0, "ecx", 12, 4, _NEEDS_XSAVE),
    _feature("f16c", 0x1, 0, "ecx", 29, 4, _NEEDS_XSAVE),
    _feature("cx16", 0x1, 0, "ecx", 13, 4, "CMPXCHG16B fails in the PVM instruction emulator"),
    _feature("pcid", 0x1, 0, "ecx", 17, 4, "PCID is not virtualized by PVM's shadow paging"),
    _feature("popcnt", 0x1, 0, "ecx", 23, 4, "POPCNT fails in the PVM instruction emulator (Linux's hweight)"),
    _feature("fsgsbase", 0x7, 0, "ebx", 0, 9, "not offered by KVM on PVM, yet kernel-mode CPUID shows the host's"),
    _feature("avx2", 0x7, 0, "ebx", 5, 9, _NEEDS_XSAVE),
    _feature("invpcid", 0x7, 0, "ebx", 10, 9, "PCID is not virtualized by PVM's shadow paging"),
    _feature("smap", 0x7, 0, "ebx", 20, 9, "CLAC/STAC fail in the PVM instruction emulator"),
    _feature("avx512f", 0x7, 0, "ebx", 16, 9, _NEEDS_XSAVE),
    _feature("avx512dq", 0x7, 0, "ebx", 17, 9, _NEEDS_XSAVE),
    _feature("avx512ifma", 0x7, 0, "ebx", 21, 9, _NEEDS_XSAVE),
    _feature("avx512cd", 0x7, 0, "ebx", 28, 9, _NEEDS_XSAVE),
    _feature("avx512bw", 0x7, 0, "ebx", 30, 9, _NEEDS_XSAVE),
    _feature("avx512vl", 0x7, 0, "ebx", 31, 9, _NEEDS_XSAVE),
    _feature("avx512vbmi", 0x7, 0, "ecx", 1, 16, _NEEDS_XSAVE),
    _feature("avx512_vbmi2", 0x7, 0, "ecx", 6, 16, _NEEDS_XSAVE),
    _feature("vaes", 0x7, 0, "ecx", 9, 16, _NEEDS_XSAVE),
    _feature("vpclmulqdq", 0x7, 0, "ecx", 10, 16, _NEEDS_XSAVE),
    _feature("avx512_vnni", 0x7, 0, "ecx", 11, 16, _NEEDS_XSAVE),
    _feature("avx512_bitalg", 0x7, 0, "ecx", 12, 16, _NEEDS_XSAVE),
    _feature("avx512_vpopcntdq", 0x7, 0, "ecx", 14, 16, _NEEDS_XSAVE),
    _feature("xsaveopt", 0xD, 1, "eax", 0, 10, _NO_XSAVE),
    _feature("xsavec", 0xD, 1, "eax", 1, 10, _NO_XSAVE),
    _feature("xsaves", 0xD, 1, "eax", 3, 10, _NO_XSAVE),
    _feature("xop", 0x80000001, 0, "ecx", 11, 6, _NEEDS_XSAVE),
    _feature("fma4", 0x80000001, 0, "ecx", 16, 6, _NEEDS_XSAVE),
    # KVM paravirtual features (Documentation/virt/kvm/x86/cpuid.rst); not X86_FEATURE bits, and kernel-mode
    # CPUID honours them on PVM. Without them Linux falls back to APIC IPIs, HLT and plain spinlocks.
    _feature("kvm_pv_unhalt", LEAF_KVM_FEATURES, 0, "eax", 7, -1, _NO_HYPERCALL),
    _feature("kvm_pv_send_ipi", LEAF_KVM_FEATURES, 0, "eax", 11, -1, _NO_HYPERCALL),
    _feature("kvm_pv_sched_yield", LEAF_KVM_FEATURES, 0, "eax", 13, -1, _NO_HYPERCALL),
)


def linux_clearcpuid(features: Iterable[FeatureBit]) -> str:
    """Kernel command-line words that mask `features` inside a Linux guest.

    Needed where the backend does not apply the CPUID table to every CPUID the
    guest kernel executes (PVM: kernel-mode CPUID still shows some host bits).
    `noxsave` covers XSAVE and everything Linux derives from it; the rest go to
    `clearcpuid=` as X86_FEATURE numbers (6.1 accepts names only with
    CONFIG_X86_FEATURE_NAMES, and parses at most 128 characters).
    """
    features = tuple(features)
    words = []
    if any(feature.name == "xsave" for feature in features):
        words.append("noxsave")
    numbers = sorted({f.linux_number for f in features
                      if f.name != "xsave" and not f.xsave_dependent and f.linux_word >= 0})
    if numbers:
        words.append("clearcpuid=" + ",".join(str(n) for n in numbers))
    return " ".join(words)


def vendor(entries: Iterable[CpuidEntry]) -> str:
    """The vendor string of leaf 0 ("GenuineIntel", "AuthenticAMD", ...)."""
    for entry in entries:
        if entry.function == LEAF_VENDOR:
            raw = b"".join(value.to_bytes(4, "little") for value in (entry.ebx, entry.edx, entry.ecx))
            return raw.decode("ascii", "replace")
    return ""


def _bits_for(count: int) -> int:
    """Number of APIC-ID bits that address `count` units (ceil(log2(count)))."""
    return max(count - 1, 0).bit_length()


def _set_field(value: int, shift: int, width: int, field: int) -> int:
    mask = ((1 << width) - 1) << shift
    return (value & ~mask) | ((field << shift) & mask)


def build_cpuid(
    base: Iterable[CpuidEntry],
    cpu_index: int,
    cpu_count: int,
    masked: Iterable[FeatureBit] = (),
) -> list:
    """The CPUID table for vCPU `cpu_index` of `cpu_count`, derived from `base`.

    `base` is not modified. The APIC ID of a vCPU is its index (KVM_CREATE_VCPU
    uses the vcpu id as the initial APIC ID).
    """
    if not 0 <= cpu_index < cpu_count:
        raise ValueError(f"vCPU index {cpu_index} out of range for {cpu_count} vCPUs")
    masked = tuple(masked)
    entries = [replace(entry) for entry in base]
    is_intel = vendor(entries) == VENDOR_INTEL
    apic_id = cpu_index
    core_bits = _bits_for(cpu_count)
    xsave_masked = any(feature.name == "xsave" for feature in masked)
    result = []
    topology_leaves = []
    for entry in entries:
        function = entry.function
        if function == LEAF_FEATURES:
            entry.ebx = _set_field(entry.ebx, EBX_APIC_ID_SHIFT, 8, apic_id)
            entry.ebx = _set_field(entry.ebx, EBX_LOGICAL_COUNT_SHIFT, 8, min(cpu_count, 255))
            entry.ebx = _set_field(entry.ebx, EBX_CLFLUSH_SHIFT, 8, 8)  # 64-byte lines
            entry.ecx |= ECX_HYPERVISOR
            if cpu_count > 1:
                entry.edx |= EDX_HTT
            else:
                entry.edx &= ~EDX_HTT
        elif function == LEAF_CACHE_PARAMS and is_intel:
            # EAX[31:26]: cores per package - 1; EAX[25:14]: logical CPUs sharing this cache - 1.
            # Each vCPU is one core: L1/L2 are private, the last level (L3) is shared by all.
            cache_level = (entry.eax >> 5) & 0x7
            if entry.eax & 0x1F:
                entry.eax = _set_field(entry.eax, 26, 6, cpu_count - 1)
                entry.eax = _set_field(entry.eax, 14, 12, cpu_count - 1 if cache_level >= 3 else 0)
        elif function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
            # Regenerated below: KVM may list only sub-leaf 0, and zeroed.
            if function not in topology_leaves:
                topology_leaves.append(function)
            continue
        elif function == LEAF_XSAVE and xsave_masked and entry.index != 1:
            # Without XSAVE the state-component leaves describe nothing; 0xD.1 stays
            # (its XSAVEOPT/XSAVEC/XSAVES bits are cleared by the mask below).
            continue
        elif function == LEAF_EXT_FEATURES:
            if cpu_count > 1:
                entry.ecx |= ECX_CMP_LEGACY
            else:
                entry.ecx &= ~ECX_CMP_LEGACY
        elif function == LEAF_EXT_ADDRESS_SIZES:
            # ECX[7:0]: cores - 1 (NC); ECX[15:12]: APIC-ID bits for cores (ApicIdCoreIdSize).
            entry.ecx = _set_field(entry.ecx, 0, 8, cpu_count - 1)
            entry.ecx = _set_field(entry.ecx, 12, 4, core_bits)
        elif function == LEAF_AMD_EXT_APIC_ID and not is_intel:
            # EAX: extended APIC ID; EBX[7:0] core (compute unit) ID, EBX[15:8] threads per core - 1;
            # ECX: node 0, one node per package.
            entry.eax = apic_id
            entry.ebx = apic_id & 0xFF
            entry.ecx = 0
        elif function == LEAF_HYPERVISOR:
            entry.ebx, entry.ecx, entry.edx = KVM_SIGNATURE
            entry.eax = max(entry.eax, LEAF_KVM_FEATURES)
        result.append(entry)
    for function in topology_leaves:
        result.extend(_topology_entries(function, apic_id, cpu_count, core_bits))
    if not any(entry.function == LEAF_HYPERVISOR for entry in result):
        result.append(CpuidEntry(LEAF_HYPERVISOR, 0, 0, LEAF_KVM_FEATURES, *KVM_SIGNATURE))
    for feature in masked:
        for entry in result:
            if entry.function == feature.leaf and entry.index == feature.subleaf:
                setattr(entry, feature.register, getattr(entry, feature.register) & ~(1 << feature.bit))
    return result


def _topology_entries(function: int, apic_id: int, cpu_count: int, core_bits: int) -> list:
    """Leaf 0xB/0x1F: level 0 SMT (one thread per core), level 1 core (all vCPUs), level 2 ends the list.

    EAX[4:0]: APIC-ID shift to the next level; EBX[15:0]: logical processors at
    this level; ECX[7:0]: level number, ECX[15:8]: level type; EDX: x2APIC ID
    (SDM Vol. 2A, CPUID leaf 0BH).
    """
    levels = (
        (0, 1, TOPOLOGY_LEVEL_SMT),
        (core_bits, cpu_count, TOPOLOGY_LEVEL_CORE),
        (0, 0, TOPOLOGY_LEVEL_INVALID),
    )
    return [
        CpuidEntry(function, level, FLAG_SIGNIFICANT_INDEX, shift, count, level | (kind << 8), apic_id)
        for level, (shift, count, kind) in enumerate(levels)
    ]
