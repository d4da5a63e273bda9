"""The alternative guest kernel: Debian's ready-made linux-image-cloud-amd64.

`xvm images pull --debian` fetches the meta package and the versioned
linux-image-*-cloud-amd64 it depends on with `apt-get download`, unpacks
/boot/vmlinuz-* and /boot/config-* and caches them as kind "debian". It needs no
build, but it is a much bigger boot (about 1.6 billion guest instructions to
/init against 45 million, GUEST.md) and keeps virtio in modules, which the
busybox initramfs does not load.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from xvm.errors import ImageError
from xvm.images import debian
from xvm.images.cache import cache_dir
from xvm.images.progress import Progress

META_PACKAGE = "linux-image-cloud-amd64"
KIND = "debian"


def find_debian_kernel() -> Optional[Path]:
    """The directory of the most recently pulled Debian kernel, if any."""
    found = sorted((cache_dir() / "kernels").glob(f"{KIND}-*/bzImage"), key=lambda path: path.stat().st_mtime)
    return found[-1].parent if found else None


def pull_debian_kernel(progress: Optional[Progress] = None, force: bool = False) -> Path:
    """Download and unpack Debian's cloud kernel; return its cache directory."""
    debs = cache_dir() / "debs"
    meta = debian.download(META_PACKAGE, debs, progress)
    images = [name for name in debian.depends(META_PACKAGE) if name.startswith("linux-image-")]
    if not images:
        raise ImageError(f"{META_PACKAGE} depends on no linux-image package here: run `sudo apt-get update`")
    package = images[0]
    target = cache_dir() / "kernels" / f"{KIND}-{package[len('linux-image-') :]}"
    if (target / "bzImage").is_file() and not force:
        return target
    deb = debian.download(package, debs, progress)
    with tempfile.TemporaryDirectory(dir=str(cache_dir())) as tmp:
        root = Path(tmp) / "root"
        if progress is not None:
            progress.stage(f"unpacking {deb.name}")
        debian.extract(deb, root)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise ImageError(f"{deb.name} has no /boot/vmlinuz-*: delete it from {debs} and retry")
        release = kernels[0].name[len("vmlinuz-") :]
        staging = Path(tmp) / "kernel"
        staging.mkdir()
        shutil.copy2(str(kernels[0]), str(staging / "bzImage"))
        config = root / "boot" / f"config-{release}"
        if config.is_file():
            shutil.copy2(str(config), str(staging / "config"))
        info = {
            "kind": KIND,
            "release": release,
            "source": f"{package} {debian.field(deb, 'Version')} (via {meta.name})",
            "config_hash": "",
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
        if progress is not None:
            progress.done(release)
    return target
