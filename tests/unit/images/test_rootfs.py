"""build_rootfs: the ext4 image holds busybox, its links, /init, /etc and device nodes, all root's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from xvm.errors import ImageError
from xvm.images import rootfs
from xvm.images.initramfs import INIT_SCRIPT

pytestmark = pytest.mark.skipif(shutil.which("mke2fs", path="/usr/sbin:/sbin:/usr/bin:/bin") is None,
                                reason="e2fsprogs (mke2fs, debugfs) is not installed")


def debugfs(image: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, str(image)], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def image(tmp_path, monkeypatch) -> Path:
    """A root disk built around a stand-in busybox (no download in unit tests)."""
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF stand-in busybox")
    monkeypatch.setattr(rootfs, "fetch_busybox", lambda progress=None: fake)
    monkeypatch.setattr(rootfs, "applets", lambda binary: ["bin/sh", "bin/ls", "sbin/init", "usr/bin/wget",
                                                           "usr/bin/lspci", "linuxrc", "nodir/x"])
    tree = tmp_path / "programs" / "lspci"  # what guest_programs.fetch_program caches
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/lspci").write_bytes(b"\x7fELF stand-in lspci")
    (tree / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (tree / "lib/x86_64-linux-gnu/libpci.so.3.9.0").write_bytes(b"\x7fELF stand-in libpci")
    (tree / "lib/x86_64-linux-gnu/libpci.so.3").symlink_to("libpci.so.3.9.0")
    (tree / ".packages").write_text("pciutils 1:3.9.0-4\n")
    monkeypatch.setattr(rootfs, "fetch_program", lambda program, progress=None: tree)
    return rootfs.build_rootfs(tmp_path / "out" / "rootfs.img", size_mib=16)


def test_image_size_and_filesystem_is_clean(image):
    assert image.stat().st_size == 16 << 20
    result = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_init_busybox_and_applet_links(image):
    assert debugfs(image, "cat /init").encode() == INIT_SCRIPT.read_bytes()
    assert debugfs(image, "cat /bin/busybox") == "\x7fELF stand-in busybox"
    listing = debugfs(image, "ls -l /bin")
    assert " sh" in listing and " ls" in listing and " xvmexit" in listing
    assert "/init" in debugfs(image, "stat /sbin/init")  # the link, not busybox's init applet
    assert "/bin/busybox" in debugfs(image, "stat /usr/bin/wget")


def test_etc_dev_and_ownership(image):
    assert "/dev/vda" in debugfs(image, "cat /etc/fstab")
    assert debugfs(image, "cat /etc/passwd").startswith("root:x:0:0:")
    dev = debugfs(image, "ls -l /dev")
    assert "20600" in dev and "console" in dev and "20666" in dev and "null" in dev
    for path in ("/", "/init", "/bin/busybox", "/etc/passwd", "/bin/sh"):
        stat = debugfs(image, f"stat {path}")
        assert "User:     0   Group:     0" in stat, (path, stat)


def test_debian_programs_and_their_libraries(image):
    assert debugfs(image, "cat /usr/bin/lspci") == "\x7fELF stand-in lspci"  # not the applet link
    assert "libpci.so.3.9.0" in debugfs(image, "stat /lib/x86_64-linux-gnu/libpci.so.3")  # links stay links
    assert "User:     0   Group:     0" in debugfs(image, "stat /lib/x86_64-linux-gnu/libpci.so.3.9.0")
    assert ".packages" not in debugfs(image, "ls /")


def test_too_small_is_refused(tmp_path):
    with pytest.raises(ImageError, match="too small"):
        rootfs.build_rootfs(tmp_path / "tiny.img", size_mib=1)
