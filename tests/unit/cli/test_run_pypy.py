"""`xvm run --engine bt` re-executes under PyPy, and PyPy with the GC settings bt needs."""

from __future__ import annotations

import pytest

from xvm.cli import run


class Exec(Exception):
    """os.execve was called (stands in for replacing the process)."""


@pytest.fixture
def execs(monkeypatch):
    calls = []

    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise Exec

    monkeypatch.setattr(run.os, "execve", execve)
    monkeypatch.setattr(run.shutil, "which", lambda name: "/usr/bin/pypy3" if name == "pypy3" else None)
    for name in list(run.PYPY_GC_ENV) + ["XVM_NO_PYPY"]:
        monkeypatch.delenv(name, raising=False)
    return calls


def _on(monkeypatch, implementation: str) -> None:
    monkeypatch.setattr(run.platform, "python_implementation", lambda: implementation)


def test_cpython_hands_bt_to_pypy_with_the_gc_settings(monkeypatch, execs):
    _on(monkeypatch, "CPython")
    with pytest.raises(Exec):
        run.reexec_under_pypy("bt")
    path, argv, env = execs[0]
    assert path == "/usr/bin/pypy3" and argv[1:3] == ["-m", "xvm"]
    assert env["XVM_NO_PYPY"] == "1" and env["PYPY_GC_NURSERY"] == run.PYPY_GC_ENV["PYPY_GC_NURSERY"]


def test_pypy_without_the_gc_settings_restarts_itself_once(monkeypatch, execs):
    _on(monkeypatch, "PyPy")
    monkeypatch.setenv("XVM_NO_PYPY", "1")  # the benchmarks' `pypy3 -m xvm`: stays on PyPy, gets the settings
    with pytest.raises(Exec):
        run.reexec_under_pypy("bt")
    assert execs[0][2]["PYPY_GC_NURSERY"] == run.PYPY_GC_ENV["PYPY_GC_NURSERY"]
    monkeypatch.setenv("PYPY_GC_NURSERY", "4M")  # already set (by us, or by the user): left alone
    run.reexec_under_pypy("bt")
    assert len(execs) == 1


def test_no_reexec_for_kvm_or_with_xvm_no_pypy(monkeypatch, execs):
    _on(monkeypatch, "CPython")
    run.reexec_under_pypy("kvm")
    monkeypatch.setenv("XVM_NO_PYPY", "1")
    run.reexec_under_pypy("bt")
    assert execs == []
