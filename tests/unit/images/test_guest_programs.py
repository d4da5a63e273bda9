"""guest_programs: Debian's Depends closure decides the libraries; a fetched tree merges into the staging root."""

from __future__ import annotations

import pytest

from xvm.errors import ImageError
from xvm.images import guest_programs
from xvm.images.guest_programs import dependency_closure, install_program

DEPENDS = {
    "pciutils": ["libc6", "libkmod2", "libpci3"],
    "pci.ids": [],
    "libc6": ["libgcc-s1"],
    "libgcc-s1": ["gcc-12-base", "libc6"],
    "gcc-12-base": [],
    "libkmod2": ["libc6", "libssl3"],
    "libssl3": ["libc6"],
    "libpci3": ["libc6", "pci.ids"],
}


def test_closure_follows_depends_once_each(monkeypatch):
    monkeypatch.setattr(guest_programs.debian, "depends", lambda package: DEPENDS[package])
    closure = dependency_closure(("pciutils", "pci.ids"))
    assert sorted(closure) == sorted(DEPENDS) and len(closure) == len(set(closure))
    assert closure[:2] == ["pciutils", "pci.ids"]


def test_a_runaway_closure_is_refused(monkeypatch):
    monkeypatch.setattr(guest_programs.debian, "depends", lambda package: [package + "x"])
    with pytest.raises(ImageError, match="more than 40 packages"):
        dependency_closure(("a",))


def test_install_merges_into_existing_directories_and_keeps_what_is_there(tmp_path):
    tree, root = tmp_path / "tree", tmp_path / "root"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/lspci").write_text("lspci")
    (tree / "usr/bin/busy").write_text("from the tree")
    (tree / "lib64").mkdir()
    (tree / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (tree / ".packages").write_text("pciutils 1\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/busy").write_text("already staged")
    names = install_program(tree, root)
    assert (root / "usr/bin/lspci").read_text() == "lspci"
    assert (root / "usr/bin/busy").read_text() == "already staged"
    assert (root / "lib64/ld-linux-x86-64.so.2").is_symlink()
    assert not (root / ".packages").exists()
    assert sorted(names) == ["lib64", "lib64/ld-linux-x86-64.so.2", "usr", "usr/bin", "usr/bin/lspci"]
