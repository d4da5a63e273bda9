"""`xvm doctor [--json] [--quick]`: can this host run virtual machines, and how fast?

The activation checks in the order a user has to fix them: CPU and its vmx/svm
flag, the KVM module, /dev/kvm and its permissions, the KVM API version, the
capabilities xvm needs (required) or can use (optional), the module parameters
that decide speed (nested, EPT/NPT, unrestricted guest, APICv/AVIC), and a
quick calibration. Exit status 0 when the kvm engine is usable, 1 otherwise;
the bt engine needs nothing and is always listed.

    $ xvm doctor
    $ xvm doctor --json | jq .capabilities
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from xvm.engines.kvm.host import HostReport, probe_host

#: Module parameters and what "off" costs.
_PARAMETER_MEANING = {
    "nested": "nested virtualization (guests running their own KVM)",
    "ept": "EPT: second-level address translation (off: shadow paging, slower)",
    "npt": "NPT: second-level address translation (off: shadow paging, slower)",
    "unrestricted_guest": "unrestricted guest: real mode runs natively (off: emulated)",
    "enable_apicv": "APICv: interrupt virtualization in hardware",
    "avic": "AVIC: interrupt virtualization in hardware",
}

PVM_EXPLANATION = (
    "This /dev/kvm is served by PVM (kvm_pvm): KVM's interface without VT-x/AMD-V underneath.",
    "- guest user-mode code runs natively, but guest kernel and real-mode code is emulated",
    "  instruction by instruction: Linux boots slowly (tens of seconds to its first line);",
    "- user-mode SYSCALL inside a guest is broken on PVM, so unmodified Linux user space",
    "  does not run on the kvm engine here; xvm masks XSAVE/AVX/CX16/PCID/SMAP in CPUID and",
    "  steps over the INT3/FWAIT instructions PVM's emulator cannot run;",
    "- the bt engine (--engine bt) needs none of this and is not affected.",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check whether this host can run VMs (CPU, /dev/kvm, KVM capabilities)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="skip the guest calibration run")
    parser.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    report = probe_host(calibrate_guest=not args.quick)
    if args.json:
        data = dataclasses.asdict(report)
        data["notes"] = notes(report)
        print(json.dumps(data, indent=2))
    else:
        print(format_report(report, _marks(sys.stdout)))
    return 0 if report.usable else 1


def _marks(stream: object) -> tuple:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return ("✔", "✘") if encoding.startswith("utf") else ("ok", "--")


def notes(report: HostReport) -> list:
    """What the report means for the user, in plain sentences (also in --json)."""
    result = []
    if not report.virt_flag:
        if report.hypervisor_flag:
            result.append(
                "No vmx/svm flag: this host is itself a VM and its hypervisor hides VT-x/AMD-V; "
                "/dev/kvm can still work (nested virtualization or PVM)."
            )
        else:
            result.append("No vmx/svm flag: enable VT-x/AMD-V (SVM) in the firmware setup.")
    if report.kvm_error:
        result.append(report.kvm_error)
    if report.backend == "pvm":
        result.extend(PVM_EXPLANATION)
    for name, value in report.module_parameters.items():
        if value in ("N", "0"):
            result.append(f"{report.module}.{name}={value}: {_PARAMETER_MEANING.get(name, name)} is off.")
    return result


def format_report(report: HostReport, marks: tuple = ("ok", "--")) -> str:
    """The human-readable report: one check per line, a mark in front."""
    yes, no = marks

    def mark(ok: bool) -> str:
        return yes if ok else no

    lines = ["xvm doctor: can this host run virtual machines?", ""]
    cpu = report.cpu_model or "unknown CPU"
    lines.append(f"  CPU              {cpu} ({report.cpu_vendor or 'unknown vendor'})")
    flag = report.virt_flag or ("hidden (host is a VM)" if report.hypervisor_flag else "absent")
    lines.append(f"{mark(bool(report.virt_flag))} vmx/svm flag     {flag}")
    module = report.module or "none loaded"
    lines.append(f"{mark(bool(report.module))} KVM module       {module} (backend: {report.backend})")
    if report.kvm_device_exists:
        access = "readable and writable" if report.kvm_device_accessible else "NOT accessible"
        device = f"{report.kvm_device_mode} {access}"
    else:
        device = "missing"
    lines.append(f"{mark(report.kvm_device_accessible)} {report.kvm_device:<16} {device}")
    if report.kvm_device_accessible:
        lines.append(f"{mark(report.api_version == 12)} KVM API          version {report.api_version}")
        lines.append("")
        lines.append("  Capabilities")
        for name, info in report.capabilities.items():
            value = info["value"]
            kind = "required" if info["required"] else "optional"
            shown = f"{value}" if name == "MAX_VCPUS" else ("yes" if value else "MISSING" if info["required"] else "no")
            lines.append(f"{mark(bool(value))}   {name:<26} {kind:<9} {shown:<8} {info['purpose']}")
    if report.module_parameters:
        lines.append("")
        lines.append(f"  Module parameters ({report.module})")
        for name, value in report.module_parameters.items():
            on = value not in ("N", "0")
            lines.append(f"{mark(on)}   {name:<26} {value:<9} {_PARAMETER_MEANING.get(name, '')}")
    if report.calibration_mips is not None:
        lines.append("")
        lines.append(
            f"  Calibration      real-mode loop at {report.calibration_mips:,.1f} million guest instructions/s"
            + (" (emulated)" if report.backend == "pvm" else "")
        )
    elif report.calibration_error:
        lines.append(f"{no} Calibration      failed: {report.calibration_error}")
    lines.append("")
    lines.append(f"  Engines usable here: {', '.join(report.engines)}")
    explanation = notes(report)
    if explanation:
        lines.append("")
        lines.extend(explanation)
    lines.append("")
    lines.append("kvm engine: " + ("usable" if report.usable else "NOT usable"))
    return "\n".join(lines)
