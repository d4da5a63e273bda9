"""Where the default guest lives: `${XDG_CACHE_HOME:-~/.cache}/xvm`.

Nothing third-party is ever committed to the repository; downloads (.deb files),
the extracted kernel source tree, built kernels and the initramfs all go here.

    debs/                      packages fetched with `apt-get download`
    busybox/busybox            bin/busybox from busybox-static, plus VERSION
    work/linux-<ver>-<hash>/   extracted linux-source tree (with xvm's patches applied)
    kernels/<kind>-<key>/      bzImage, config, vmlinux, info.json
    initramfs.cpio             busybox + /init, written by xvm.images.cpio
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Return the xvm cache directory, creating it; honours XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "xvm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a temporary file and rename, so a concurrent
    xvm never boots a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
