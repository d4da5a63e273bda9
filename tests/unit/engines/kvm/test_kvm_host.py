"""Host probing (`xvm doctor`'s data): parsing, backend detection, fixes in messages."""

from __future__ import annotations

import errno
import os

from xvm.engines.kvm import host
from xvm.engines.kvm.system import open_failure_message


def test_read_cpuinfo_first_processor_only(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nflags\t\t: fpu vmx sse2\n\n"
        "processor\t: 1\nvendor_id\t: Other\n"
    )
    info = host.read_cpuinfo(str(cpuinfo))
    assert info["vendor_id"] == "GenuineIntel"
    assert "vmx" in info["flags"].split()
    assert host.read_cpuinfo(str(tmp_path / "missing")) == {}


def test_backend_detection_and_module_parameters(tmp_path) -> None:
    parameters = tmp_path / "kvm_intel" / "parameters"
    parameters.mkdir(parents=True)
    (parameters / "nested").write_text("Y\n")
    (parameters / "ept").write_text("N\n")
    assert host.loaded_module(str(tmp_path)) == "kvm_intel"
    assert host.backend_of("kvm_intel") == "vt-x"
    assert host.backend_of("kvm_amd") == "amd-v"
    assert host.backend_of("kvm_pvm") == "pvm"
    assert host.backend_of("") == "unknown"
    assert host.module_parameters("kvm_intel", str(tmp_path)) == {"nested": "Y", "ept": "N"}
    assert host.loaded_module(str(tmp_path / "none")) == ""


def test_open_failure_messages_name_the_fix() -> None:
    missing = open_failure_message("/dev/kvm", OSError(errno.ENOENT, "No such file"))
    assert "modprobe kvm_intel" in missing and "--engine bt" in missing
    denied = open_failure_message("/dev/kvm", OSError(errno.EACCES, "Permission denied"))
    assert "kvm group" in denied and "chmod" in denied


def test_missing_device(tmp_path) -> None:
    path = str(tmp_path / "kvm")
    usable, reason = host.kvm_available(path)
    assert not usable and "does not exist" in reason
    report = host.probe_host(calibrate_guest=False, path=path)
    assert not report.usable and not report.kvm_device_exists
    assert report.engines == ["bt"]
    assert "modprobe" in report.kvm_error


def test_required_capabilities_are_marked() -> None:
    required = {c.name for c in host.CAPABILITIES if c.required}
    assert {"IRQCHIP", "USER_MEMORY", "SET_TSS_ADDR", "EXT_CPUID", "IMMEDIATE_EXIT", "PIT2"} <= required
    optional = {c.name for c in host.CAPABILITIES if not c.required}
    assert {"IOEVENTFD", "IRQFD", "MAX_VCPUS", "NESTED_STATE", "X2APIC_API"} <= optional
    assert "KVM_CAP_PIT2" in host.missing_caps_message(["PIT2"])


def test_real_host_probe() -> None:
    report = host.probe_host(calibrate_guest=False)
    if not os.path.exists("/dev/kvm"):
        assert not report.usable
        return
    assert report.api_version == 12
    assert report.usable == (not report.missing_required)
    assert report.capabilities["MAX_VCPUS"]["value"] >= 1
    assert report.engines[-1] == "bt"
