"""Contents of the default guest's initramfs (with a stand-in busybox binary)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from xvm.images.initramfs import INIT_SCRIPT, initramfs_bytes

APPLETS = ["bin/sh", "bin/mount", "sbin/reboot", "usr/bin/base64", "usr/sbin/chroot", "linuxrc"]


def listing(data: bytes) -> dict:
    """name -> `cpio -tv` mode column, e.g. 'crw-------'."""
    result = subprocess.run(["cpio", "-tv", "--quiet"], input=data, capture_output=True, check=True)
    rows = {}
    for line in result.stdout.decode().splitlines():
        fields = line.split()
        name = fields[-3] if "->" in fields else fields[-1]
        rows[name] = fields[0]
    return rows


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_initramfs_contents():
    rows = listing(initramfs_bytes(b"\x7fELF fake busybox", APPLETS, INIT_SCRIPT.read_bytes()))
    assert rows["init"] == "-rwxr-xr-x"
    assert rows["bin/busybox"] == "-rwxr-xr-x"
    assert rows["dev/console"].startswith("c") and rows["dev/null"] == "crw-rw-rw-"
    for directory in ("proc", "sys", "dev", "tmp", "root", "etc"):
        assert rows[directory].startswith("d")
    assert rows["tmp"] == "drwxrwxrwt"
    for applet in APPLETS:
        assert rows[applet].startswith("l")
    assert {"etc/passwd", "etc/group"} <= set(rows)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_console_precedes_everything_the_kernel_opens(tmp_path):
    data = initramfs_bytes(b"bb", APPLETS, b"#!/bin/busybox sh\n")
    names = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True).stdout.split()
    assert names.index(b"dev/console") < names.index(b"init")
    # The applet links point at the one binary, by absolute path.
    subprocess.run(["cpio", "-i", "--quiet", "--nonmatching", "dev/*"], input=data, cwd=str(tmp_path), check=True)
    assert os.readlink(str(tmp_path / "bin" / "sh")) == "/bin/busybox"
    assert (tmp_path / "etc" / "passwd").read_text().startswith("root:x:0:0:")


def test_init_script_is_busybox_sh():
    assert INIT_SCRIPT.read_text().startswith("#!/bin/busybox sh\n")
