"""Debian programs for the root disk, with the shared libraries they load.

busybox-static has no `lspci` applet, so the root disk carries Debian's own
(pciutils) instead. A program is a few files from its packages; everything
it loads comes from the closure of their Depends (for lspci: libpci3, pci.ids,
libkmod2, libudev1, zlib1g, liblzma5, libzstd1, libssl3, libc6, ...), as
apt would install it: each package is fetched with `apt-get download`
(xvm.images.debian) and only the program's files and the shared objects of
the multiarch library directories are kept. Debian's ld.so searches
/lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu without an ld.so.cache,
so nothing else is needed. The tree is cached as

    programs/<name>/           usr/bin/lspci, lib/x86_64-linux-gnu/..., lib64/ld-linux-x86-64.so.2
    programs/<name>/.packages  the packages and versions it was made from

The initramfs stays busybox-only (boot time on bt grows with its size).

    tree = fetch_program(LSPCI)
    names = install_program(tree, staging_root)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from xvm.errors import ImageError
from xvm.images import debian
from xvm.images.cache import cache_dir
from xvm.images.progress import Progress

#: Where Debian keeps shared objects (and the dynamic loader) on x86-64.
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64")
#: A closure larger than this means apt's dependency data is not what we expect.
MAX_PACKAGES = 40
MARKER = ".packages"


@dataclass(frozen=True)
class GuestProgram:
    """Files to take from Debian packages; their shared libraries follow from the packages' Depends."""

    name: str
    packages: tuple
    files: tuple


LSPCI = GuestProgram("lspci", ("pciutils", "pci.ids"), ("usr/bin/lspci", "usr/share/misc/pci.ids"))
#: ioping: random-read IOPS for bench/virtio_io.py (fio would bring Ceph and RDMA libraries along).
IOPING = GuestProgram("ioping", ("ioping",), ("usr/bin/ioping",))


def dependency_closure(packages: tuple) -> list[str]:
    """`packages` and everything they depend on, recursively (apt-cache depends)."""
    seen: list[str] = []
    todo = list(packages)
    while todo:
        package = todo.pop(0)
        if package in seen:
            continue
        seen.append(package)
        if len(seen) > MAX_PACKAGES:
            raise ImageError(f"{', '.join(packages)} depend on more than {MAX_PACKAGES} packages: check apt's sources")
        todo.extend(debian.depends(package))
    return seen


def _libraries(root: Path) -> list[Path]:
    """The shared objects (files and symlinks) directly in the library directories of an unpacked package."""
    found = []
    for directory in LIBRARY_DIRS:
        folder = root / directory
        if folder.is_dir():
            found += [path for path in sorted(folder.iterdir()) if ".so" in path.name and not path.is_dir()]
    return found


def _copy(source: Path, root: Path, tree: Path) -> None:
    target = tree / source.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        if not os.path.lexists(target):
            os.symlink(os.readlink(source), target)
    else:
        shutil.copy2(str(source), str(target))


def fetch_program(program: GuestProgram, progress: Optional[Progress] = None) -> Path:
    """Return the cached tree of `program`, building it from Debian packages when missing."""
    tree = cache_dir() / "programs" / program.name
    if (tree / MARKER).exists():
        return tree
    packages = dependency_closure(program.packages)
    debs = cache_dir() / "debs"
    versions = []
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(tree.parent), prefix=f".{program.name}-") as tmp:
        staged = Path(tmp) / "tree"
        for package in packages:
            deb = debian.download(package, debs, progress)
            versions.append(f"{package} {debian.field(deb, 'Version')}")
            unpacked = Path(tmp) / package
            debian.extract(deb, unpacked)
            for library in _libraries(unpacked):
                _copy(library, unpacked, staged)
            for name in program.files:
                if os.path.lexists(unpacked / name):
                    _copy(unpacked / name, unpacked, staged)
        missing = [name for name in program.files if not os.path.lexists(staged / name)]
        if missing:
            raise ImageError(
                f"{', '.join(program.packages)} did not provide {', '.join(missing)}: delete {debs} and retry"
            )
        (staged / MARKER).write_text("\n".join(versions) + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        staged.rename(tree)
    return tree


def install_program(tree: Path, root: Path) -> list[str]:
    """Copy a fetched tree into the staging `root`; return the paths it added (relative, parents first)."""
    names = []
    for directory, subdirs, files in os.walk(tree):
        relative = Path(directory).relative_to(tree)
        for name in sorted(subdirs) + sorted(files):
            if name == MARKER and relative == Path("."):
                continue
            source, target = Path(directory) / name, root / relative / name
            if source.is_dir() and not source.is_symlink():
                target.mkdir(exist_ok=True)
            elif not os.path.lexists(target):
                _copy(source, tree, root)
            else:
                continue
            names.append(str(relative / name))
    return names
