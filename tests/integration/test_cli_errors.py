"""Every bad input to `xvm run` gets one line `xvm: error: ...` and exit status 2, never a traceback.

The errors are about the input, not the engine: each case runs on the kvm
engine where /dev/kvm is usable, else on bt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import kvm_unavailable_reason

USAGE_ERROR = 2
ENGINE = "bt" if kvm_unavailable_reason() else "kvm"


def assert_usage_error(result, *mentions: str) -> None:
    """Status 2, no traceback, exactly one error line, naming what was wrong."""
    assert result.returncode == USAGE_ERROR, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.describe()
    # Our own errors say "xvm: error:"; argparse's (a bad choice) say "xvm run: error:".
    assert errors[0].startswith(("xvm: error: ", "xvm run: error: ")), result.describe()
    for mention in mentions:
        assert mention in errors[0], f"{mention!r} not in {errors[0]!r}"


def test_missing_kernel_file(xvm, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kernel"
    assert_usage_error(xvm("run", "--engine", ENGINE, "--kernel", str(missing)), "--kernel", str(missing))


def test_kernel_that_is_no_image(xvm, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a kernel\n" * 100)
    assert_usage_error(xvm("run", "--engine", ENGINE, "--kernel", str(text)), str(text))


@pytest.mark.parametrize("size", ["1M", "999999G"])
def test_mem_out_of_range(xvm, guests, size: str) -> None:
    assert_usage_error(xvm("run", "--engine", ENGINE, "--kernel", str(guests["hello"]), "--mem", size), "--mem")


def test_mem_not_a_size(xvm, guests) -> None:
    assert_usage_error(xvm("run", "--engine", ENGINE, "--kernel", str(guests["hello"]), "--mem", "lots"), "--mem")


def test_zero_cpus(xvm, guests) -> None:
    assert_usage_error(xvm("run", "--engine", ENGINE, "--kernel", str(guests["hello"]), "--cpus", "0"), "--cpus")


def test_unknown_engine(xvm, guests) -> None:
    assert_usage_error(xvm("run", "--engine", "warp", "--kernel", str(guests["hello"])), "--engine", "warp")


def test_missing_initrd(xvm, guests, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-initrd"
    result = xvm("run", "--engine", ENGINE, "--kernel", str(guests["hello"]), "--initrd", str(missing))
    assert_usage_error(result, "--initrd", str(missing))
