"""What this host's KVM can do: the activation checks behind `xvm doctor` and `--engine auto`.

Hardware-assisted virtualization needs, in order: a CPU with VT-x (vmx) or
AMD-V (svm), enabled in the firmware; the kvm_intel or kvm_amd module loaded;
/dev/kvm readable and writable by the user; a KVM with the capabilities xvm
uses. Inside a cloud VM the vmx/svm flag is usually hidden and /dev/kvm, if
present at all, may be served by PVM (module kvm_pvm): KVM's interface on
shadow paging and instruction emulation, with no VT-x/AMD-V underneath. It
runs guest user code natively but emulates guest kernel code instruction by
instruction, so a quick calibration (guest MIPS of a real-mode loop) is part
of the report.

    report = probe_host()
    usable, reason = kvm_available()
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from typing import Optional

from xvm.arch.x86 import layout
from xvm.engines.kvm import ioctls
from xvm.engines.kvm.system import KVM_DEVICE, Kvm
from xvm.errors import KvmError

#: Backends by the kernel module that serves /dev/kvm.
BACKEND_MODULES = (("kvm_intel", "vt-x"), ("kvm_amd", "amd-v"), ("kvm_pvm", "pvm"))

#: Module parameters worth reporting (/sys/module/<module>/parameters/<name>).
MODULE_PARAMETERS = {
    "kvm_intel": ("nested", "ept", "unrestricted_guest", "enable_apicv"),
    "kvm_amd": ("nested", "npt", "avic"),
}


@dataclass(frozen=True)
class Capability:
    """A KVM_CAP_* xvm checks, whether the kvm engine cannot work without it, and what it is for."""

    name: str
    cap: int
    required: bool
    purpose: str


CAPABILITIES = (
    Capability("USER_MEMORY", ioctls.KVM_CAP_USER_MEMORY, True, "guest RAM from host memory (memfd)"),
    Capability("SET_TSS_ADDR", ioctls.KVM_CAP_SET_TSS_ADDR, True, "real-mode emulation area (Intel)"),
    Capability("EXT_CPUID", ioctls.KVM_CAP_EXT_CPUID, True, "KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2"),
    Capability("IRQCHIP", ioctls.KVM_CAP_IRQCHIP, True, "in-kernel PIC, IOAPIC and LAPICs"),
    Capability("PIT2", ioctls.KVM_CAP_PIT2, True, "in-kernel i8254 timer"),
    Capability("IMMEDIATE_EXIT", ioctls.KVM_CAP_IMMEDIATE_EXIT, True, "kicking vCPUs for pause/stop"),
    Capability("IOEVENTFD", ioctls.KVM_CAP_IOEVENTFD, False, "virtio notifications without an exit"),
    Capability("IRQFD", ioctls.KVM_CAP_IRQFD, False, "device interrupts from eventfds"),
    Capability("SIGNAL_MSI", ioctls.KVM_CAP_SIGNAL_MSI, False, "MSI/MSI-X delivery for PCI devices"),
    Capability("VCPU_EVENTS", ioctls.KVM_CAP_VCPU_EVENTS, False, "exception injection (PVM INT3 step-over)"),
    Capability("MAX_VCPUS", ioctls.KVM_CAP_MAX_VCPUS, False, "most vCPUs per VM"),
    Capability("MANUAL_DIRTY_LOG_PROTECT2", ioctls.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, False,
               "dirty-page logging for live snapshots"),
    Capability("NESTED_STATE", ioctls.KVM_CAP_NESTED_STATE, False, "saving guests that run hypervisors"),
    Capability("X2APIC_API", ioctls.KVM_CAP_X2APIC_API, False, "32-bit APIC IDs (more than 255 vCPUs)"),
)


@dataclass
class HostReport:
    """Everything `xvm doctor` prints, as data (its --json output)."""

    cpu_vendor: str = ""
    cpu_model: str = ""
    virt_flag: str = ""  # "vmx", "svm" or "" (hidden in most VMs)
    hypervisor_flag: bool = False  # the host itself is a VM
    kvm_device: str = KVM_DEVICE
    kvm_device_exists: bool = False
    kvm_device_mode: str = ""
    kvm_device_accessible: bool = False
    kvm_error: str = ""  # why /dev/kvm cannot be used, with the fix
    api_version: int = 0
    capabilities: dict = field(default_factory=dict)  # name -> {"value", "required", "purpose"}
    missing_required: list = field(default_factory=list)
    module: str = ""  # kvm_intel | kvm_amd | kvm_pvm | ""
    backend: str = "unknown"  # vt-x | amd-v | pvm | unknown
    module_parameters: dict = field(default_factory=dict)
    calibration_mips: Optional[float] = None
    calibration_error: str = ""
    usable: bool = False
    engines: list = field(default_factory=list)


def read_cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """vendor_id, model name and flags of the first CPU in /proc/cpuinfo."""
    info: dict = {}
    try:
        with open(path) as file:
            for line in file:
                if not line.strip():
                    break  # first processor block only
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def loaded_module(sys_module: str = "/sys/module") -> str:
    """Which KVM backend module is loaded ("" if none)."""
    for module, _ in BACKEND_MODULES:
        if os.path.isdir(os.path.join(sys_module, module)):
            return module
    return ""


def backend_of(module: str) -> str:
    return dict(BACKEND_MODULES).get(module, "unknown")


def detect_backend() -> str:
    """"vt-x", "amd-v", "pvm" or "unknown": what executes guest code behind /dev/kvm."""
    return backend_of(loaded_module())


def module_parameters(module: str, sys_module: str = "/sys/module") -> dict:
    """The module parameters that matter for xvm, as their sysfs strings ("Y", "1", ...)."""
    values = {}
    for name in MODULE_PARAMETERS.get(module, ()):
        try:
            with open(os.path.join(sys_module, module, "parameters", name)) as file:
                values[name] = file.read().strip()
        except OSError:
            continue
    return values


def query_capabilities(kvm: Kvm) -> dict:
    """{name: KVM_CHECK_EXTENSION value} for every capability in CAPABILITIES."""
    return {capability.name: kvm.check_extension(capability.cap) for capability in CAPABILITIES}


def required_caps_missing(kvm: Kvm) -> list:
    """Names of required capabilities this KVM lacks (empty when the kvm engine can run)."""
    return [c.name for c in CAPABILITIES if c.required and not kvm.check_extension(c.cap)]


def kvm_available(path: str = KVM_DEVICE) -> tuple:
    """(usable, reason): can the kvm engine run here, and if not, why and how to fix it."""
    try:
        with Kvm(path) as kvm:
            missing = required_caps_missing(kvm)
    except KvmError as error:
        return False, str(error)
    if missing:
        return False, missing_caps_message(missing)
    backend = detect_backend()
    if backend == "pvm":
        return True, "KVM is served by PVM (no VT-x/AMD-V): guest kernel code is emulated and slow"
    return True, f"KVM ({backend}) is usable"


def missing_caps_message(missing: list) -> str:
    return (
        f"this KVM lacks required capabilities {', '.join('KVM_CAP_' + name for name in missing)}: "
        "update the host kernel, or use --engine bt"
    )


def calibrate(kvm: Kvm, target_seconds: float = 0.05) -> float:
    """Guest MIPS of a real-mode `dec ecx; jnz` loop run for about `target_seconds`.

    Real hardware runs it at thousands of MIPS; PVM emulates real-mode code and
    manages about 2. Grows the loop count until one run lasts long enough to time.
    """
    # Local imports: vm/vcpu pull in the exit types, which doctor's fast path never needs.
    from xvm.engines.base import IoOut
    from xvm.engines.kvm.vm import VmFd
    from xvm.memory.guest_memory import GuestMemory

    code_address = 0x1000
    # 66 49: dec ecx; 75 fc: jnz back to dec; e6 80: out 0x80, al (ends the run).
    code = bytes((0x66, 0x49, 0x75, 0xFC, 0xE6, 0x80))
    instructions_per_iteration = 2
    memory = GuestMemory.allocate(0x10000, name="xvm-calibrate")
    vm = VmFd(kvm.create_vm(), kvm.vcpu_mmap_size())
    vcpu = None
    try:
        vm.set_tss_address(layout.KVM_TSS_ADDRESS)
        vm.set_user_memory_region(0, 0, memory.size, memory.regions[0].host_address())
        memory.write(code_address, code)
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        iterations = 2000
        while True:
            regs = vcpu.get_regs()
            regs.rip, regs.rcx, regs.rflags = code_address, iterations, 2
            vcpu.set_regs(regs)
            start = time.perf_counter()
            exit_ = vcpu.run()
            elapsed = time.perf_counter() - start
            if not isinstance(exit_, IoOut):
                raise KvmError(f"calibration guest stopped with {exit_}")
            if elapsed >= target_seconds * 0.6 or iterations >= 1 << 31:
                return iterations * instructions_per_iteration / elapsed / 1e6
            iterations = min(int(iterations * min(target_seconds / max(elapsed, 1e-6), 100)), 1 << 31)
    finally:
        if vcpu is not None:
            vcpu.close()
        vm.close()
        memory.close()


def probe_host(calibrate_guest: bool = True, path: str = KVM_DEVICE) -> HostReport:
    """Run every activation check; never raises for a broken setup (that is what it reports)."""
    report = HostReport(kvm_device=path)
    info = read_cpuinfo()
    report.cpu_vendor = info.get("vendor_id", "")
    report.cpu_model = info.get("model name", "")
    flags = info.get("flags", "").split()
    report.virt_flag = "vmx" if "vmx" in flags else "svm" if "svm" in flags else ""
    report.hypervisor_flag = "hypervisor" in flags
    report.module = loaded_module()
    report.backend = backend_of(report.module)
    report.module_parameters = module_parameters(report.module)
    try:
        mode = os.stat(path).st_mode
        report.kvm_device_exists = True
        report.kvm_device_mode = stat.filemode(mode)
    except OSError:
        pass
    report.engines = ["bt"]
    try:
        kvm = Kvm(path)
    except KvmError as error:
        report.kvm_error = str(error)
        if report.kvm_device_exists and not report.module:
            report.kvm_error += "; no kvm_intel/kvm_amd module is loaded"
        return report
    with kvm:
        report.kvm_device_accessible = True
        report.api_version = kvm.api_version()
        values = query_capabilities(kvm)
        for capability in CAPABILITIES:
            report.capabilities[capability.name] = {
                "value": values[capability.name],
                "required": capability.required,
                "purpose": capability.purpose,
            }
        report.missing_required = [c.name for c in CAPABILITIES if c.required and not values[c.name]]
        if report.missing_required:
            report.kvm_error = missing_caps_message(report.missing_required)
        else:
            report.usable = True
            report.engines.insert(0, "kvm")
        if calibrate_guest and report.usable:
            try:
                report.calibration_mips = calibrate(kvm)
            except (KvmError, OSError) as error:
                report.calibration_error = str(error)
    return report

