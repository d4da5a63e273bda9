"""The newc writer against the format spec and against GNU cpio."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from xvm.images.cpio import HEADER_SIZE, MAGIC, CpioWriter

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")


def sample() -> bytes:
    writer = CpioWriter()
    writer.directory("bin")
    writer.directory("dev")
    writer.directory("tmp", 0o1777)
    writer.file("bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755)
    writer.file("odd", b"12345")
    writer.symlink("bin/sh", "/bin/tool")
    writer.char_device("dev/console", 5, 1)
    return writer.finish()


def headers(data: bytes) -> list:
    """Walk the archive the way init/initramfs.c does: (name, fields, body)."""
    entries = []
    offset = 0
    while True:
        assert offset % 4 == 0
        header = data[offset : offset + HEADER_SIZE]
        assert header[:6] == MAGIC
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[offset + HEADER_SIZE : offset + HEADER_SIZE + namesize]
        assert name.endswith(b"\0")
        offset += HEADER_SIZE + namesize
        offset += -offset % 4
        body = data[offset : offset + filesize]
        offset += filesize
        offset += -offset % 4
        entries.append((name[:-1].decode(), fields, body))
        if name == b"TRAILER!!!\0":
            assert offset == len(data)
            return entries


def test_header_fields_and_padding():
    entries = {name: (fields, body) for name, fields, body in headers(sample())}
    fields, body = entries["bin/tool"]
    assert stat.S_ISREG(fields[1]) and stat.S_IMODE(fields[1]) == 0o755
    assert body == b"#!/bin/sh\necho hi\n"
    fields, body = entries["bin/sh"]
    assert stat.S_ISLNK(fields[1]) and body == b"/bin/tool"
    fields, _ = entries["dev/console"]
    assert stat.S_ISCHR(fields[1]) and (fields[9], fields[10]) == (5, 1)
    fields, _ = entries["tmp"]
    assert stat.S_ISDIR(fields[1]) and stat.S_IMODE(fields[1]) == 0o1777
    assert entries["odd"][1] == b"12345"
    inodes = [fields[0] for name, (fields, _) in entries.items() if name != "TRAILER!!!"]
    assert len(set(inodes)) == len(inodes) and all(inodes)


def test_deterministic():
    assert sample() == sample()


@pytest.mark.parametrize(
    "path",
    ["", "/", "a/../b", "missing/child", "bin", "TRAILER!!!"],
)
def test_rejects_bad_paths(path):
    writer = CpioWriter()
    writer.directory("bin")
    with pytest.raises(ValueError):
        writer.file(path, b"")


@needs_cpio
def test_gnu_cpio_lists_it():
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=sample(), capture_output=True, check=True).stdout
    assert listing.decode().split() == ["bin", "dev", "tmp", "bin/tool", "odd", "bin/sh", "dev/console"]


@needs_cpio
def test_gnu_cpio_extracts_it(tmp_path):
    subprocess.run(
        ["cpio", "-i", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"],
        input=sample(),
        cwd=str(tmp_path),
        check=True,
    )
    assert (tmp_path / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(str(tmp_path / "bin" / "tool"), os.X_OK)
    assert os.readlink(str(tmp_path / "bin" / "sh")) == "/bin/tool"
    assert (tmp_path / "odd").read_bytes() == b"12345"
