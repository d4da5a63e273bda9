"""`xvm doctor`: report wording, JSON output and exit status."""

from __future__ import annotations

import argparse
import json

from xvm.cli import doctor
from xvm.engines.kvm.host import HostReport


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xvm")
    doctor.register(parser.add_subparsers(dest="command"))
    return parser


def _report(**changes) -> HostReport:
    report = HostReport(
        cpu_vendor="GenuineIntel", cpu_model="Test CPU", virt_flag="vmx", kvm_device_exists=True,
        kvm_device_mode="crw-rw----", kvm_device_accessible=True, api_version=12, module="kvm_intel",
        backend="vt-x", module_parameters={"nested": "Y", "ept": "N"}, calibration_mips=3000.0,
        usable=True, engines=["kvm", "bt"],
        capabilities={
            "IRQCHIP": {"value": 1, "required": True, "purpose": "in-kernel PIC"},
            "MAX_VCPUS": {"value": 288, "required": False, "purpose": "most vCPUs"},
            "NESTED_STATE": {"value": 0, "required": False, "purpose": "nested"},
        },
    )
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def test_healthy_vtx_host() -> None:
    text = doctor.format_report(_report())
    assert "ok vmx/svm flag     vmx" in text
    assert "IRQCHIP" in text and "required" in text and "288" in text
    assert "NESTED_STATE" in text and " no " in text
    assert "ept" in text and "shadow paging" in text
    assert "Engines usable here: kvm, bt" in text
    assert "kvm engine: usable" in text
    assert "PVM" not in text


def test_pvm_host_is_explained() -> None:
    report = _report(virt_flag="", hypervisor_flag=True, module="kvm_pvm", backend="pvm",
                     module_parameters={}, calibration_mips=2.1)
    text = doctor.format_report(report)
    assert "hidden (host is a VM)" in text
    assert "served by PVM" in text and "SYSCALL" in text and "bt engine" in text
    assert "(emulated)" in text


def test_missing_device_names_the_fix() -> None:
    report = _report(kvm_device_exists=False, kvm_device_accessible=False, usable=False, engines=["bt"],
                     kvm_error="/dev/kvm does not exist: load KVM (`sudo modprobe kvm_intel` ...)",
                     capabilities={}, calibration_mips=None)
    text = doctor.format_report(report, ("Y", "N"))
    assert "N /dev/kvm         missing" in text
    assert "modprobe kvm_intel" in text
    assert "Engines usable here: bt" in text
    assert "kvm engine: NOT usable" in text


def test_json_and_exit_status(capsys, monkeypatch) -> None:
    for usable, status in ((True, 0), (False, 1)):
        monkeypatch.setattr(doctor, "probe_host", lambda calibrate_guest, usable=usable: _report(usable=usable))
        args = _parser().parse_args(["doctor", "--json", "--quick"])
        assert args.func(args) == status
        data = json.loads(capsys.readouterr().out)
        assert data["usable"] is usable and data["backend"] == "vt-x"
        assert any("ept=N" in note for note in data["notes"])


def test_real_doctor_runs(capsys) -> None:
    args = _parser().parse_args(["doctor", "--quick"])
    status = args.func(args)
    out = capsys.readouterr().out
    assert status in (0, 1)
    assert ("kvm engine: usable" in out) == (status == 0)
