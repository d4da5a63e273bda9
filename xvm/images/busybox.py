"""busybox for the initramfs: Debian's busybox-static, fetched with apt-get download.

A static binary needs no libraries in the initramfs; Debian's build has every
applet /init and an interactive session need (sh, mount, setsid, cttyhack,
base64, dd, ...).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from xvm.errors import ImageError
from xvm.images import debian
from xvm.images.cache import cache_dir
from xvm.images.progress import Progress

PACKAGE = "busybox-static"


def busybox_path() -> Path:
    """Where the cached busybox binary lives (it may not exist yet)."""
    return cache_dir() / "busybox" / "busybox"


def busybox_version() -> str:
    """The Debian version of the cached busybox, or "" when it is not fetched."""
    version = busybox_path().with_name("VERSION")
    return version.read_text().strip() if version.exists() else ""


def fetch_busybox(progress: Optional[Progress] = None, force: bool = False) -> Path:
    """Return the cached busybox binary, downloading and unpacking it when missing."""
    target = busybox_path()
    if target.exists() and not force:
        return target
    deb = debian.download(PACKAGE, cache_dir() / "debs", progress)
    with tempfile.TemporaryDirectory(dir=str(cache_dir())) as tmp:
        root = Path(tmp)
        debian.extract(deb, root)
        binary = root / "bin" / "busybox"
        if not binary.is_file():
            raise ImageError(f"{deb.name} has no bin/busybox: delete it from {deb.parent} and retry")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(binary), str(target) + ".tmp")
        Path(str(target) + ".tmp").replace(target)
    target.with_name("VERSION").write_text(debian.field(deb, "Version") + "\n")
    return target


def applets(binary: Path) -> list[str]:
    """The applets `binary` provides, as install paths ("bin/ls", "sbin/reboot", ...).

    Asks the binary itself (`busybox --list-full`), so the initramfs links exactly
    what this build has.
    """
    try:
        result = subprocess.run([str(binary), "--list-full"], capture_output=True, text=True)
    except OSError as error:
        raise ImageError(f"cannot run {binary} ({error}): delete it and run `xvm images build --force`") from error
    names = [line.strip().strip("/") for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not names:
        raise ImageError(f"{binary} --list-full failed: delete it and run `xvm images build --force`")
    return names
