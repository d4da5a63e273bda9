"""A guest that triple-faults stops the VM with status 4, "triple fault" and a register dump on stderr."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("engine", ["kvm", "bt"])
def test_triple_fault_dump(engine: str, request, xvm, guests) -> None:
    if engine == "kvm":
        request.getfixturevalue("kvm_available")
    result = xvm("run", "--engine", engine, "--kernel", str(guests["triple_fault"]), "--mem", "64M",
                 "--timeout", "30", timeout=60)
    assert result.returncode == 4, result.describe()
    assert "triple fault" in result.stderr, result.describe()
    for register in ("RIP=", "CR0="):
        assert register in result.stderr, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert "PASS" not in result.stdout, result.describe()
