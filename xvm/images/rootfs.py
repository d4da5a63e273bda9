"""The default guest's root disk: an ext4 image with busybox and xvm's /init.

The same tree as the initramfs (xvm/images/initramfs.py: its directories,
/etc files, busybox with one symlink per applet, xvmexit and init.sh), plus
what a disk root wants: /etc/fstab, /sbin/init pointing at /init (so the
disk also boots without init=), /mnt, /var, /run, and Debian's lspci with
its shared libraries (xvm/images/guest_programs.py), which busybox lacks. e2fsprogs' `mke2fs -d`
copies a staging directory into the new filesystem without mounting
anything; `debugfs -w` then adds the device nodes and gives every file to
root, so no privilege is needed to build it.

    build_rootfs(Path("rootfs.img"))
    # xvm run --disk rootfs.img --append "root=/dev/vda rw console=ttyS0 init=/init"

The kernel needs CONFIG_VIRTIO_BLK, CONFIG_VIRTIO_PCI and CONFIG_EXT4_FS
built in (=y), since there is no initramfs to load modules from; the default
kernel (xvm/images/kernel.config) has them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from xvm.errors import ImageError
from xvm.images.busybox import applets, fetch_busybox
from xvm.images.guest_programs import LSPCI, GuestProgram, fetch_program, install_program
from xvm.images.initramfs import DEBUG_EXIT_PORT, DEVICES, DIRECTORIES, ETC_FILES, INIT_SCRIPT
from xvm.images.outb import outb_elf
from xvm.images.progress import Progress

#: Default size of the root disk in MiB: busybox and lspci with its libraries take ~20 MiB, the rest is room to write.
DEFAULT_SIZE_MIB = 64
#: Debian programs every root disk has (busybox-static lacks lspci).
DEFAULT_PROGRAMS = (LSPCI,)
# Directories a disk root has on top of the initramfs ones.
EXTRA_DIRECTORIES = (("mnt", 0o755), ("var", 0o755), ("run", 0o755))
FSTAB = b"/dev/vda\t/\text4\trw,relatime\t0 1\nproc\t/proc\tproc\tdefaults\t0 0\nsysfs\t/sys\tsysfs\tdefaults\t0 0\n"
LABEL = "xvmroot"


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise ImageError(f"building the root disk needs {name} from e2fsprogs: apt-get install e2fsprogs")
    return path


def _stage(root: Path, busybox: Path, programs: Sequence[Path] = ()) -> list[str]:
    """Lay out the tree under `root` (with the fetched program trees); return every path in it (relative)."""
    names = []
    for path, mode in DIRECTORIES + EXTRA_DIRECTORIES:
        (root / path).mkdir(mode=mode)
        os.chmod(root / path, mode)  # mkdir's mode is masked by the umask
        names.append(path)
    files = list(ETC_FILES) + [("etc/fstab", FSTAB)]
    for path, data in files:
        (root / path).write_bytes(data)
        names.append(path)
    executables = (
        ("bin/busybox", busybox.read_bytes()),
        ("bin/xvmexit", outb_elf(DEBUG_EXIT_PORT)),
        ("init", INIT_SCRIPT.read_bytes()),
    )
    for path, data in executables:
        (root / path).write_bytes(data)
        os.chmod(root / path, 0o755)
        names.append(path)
    (root / "sbin/init").symlink_to("/init")
    names.append("sbin/init")
    for tree in programs:  # before the applet links: a real program wins over a busybox applet
        names += install_program(tree, root)
    for applet in sorted(applets(busybox)):
        target = root / applet
        if applet.count("/") and not os.path.lexists(target) and target.parent.is_dir():
            target.symlink_to("/bin/busybox")
            names.append(applet)
    return names


def _debugfs_script(names: list[str]) -> str:
    """Device nodes (not creatable by a non-root user in the staging tree) and root ownership."""
    lines = []
    for path, major, minor, mode in DEVICES:
        # debugfs's mknod takes a name in its current directory, not a path.
        parent, _, name = path.rpartition("/")
        lines += [f"cd /{parent}", f"mknod {name} c {major} {minor}", f"sif /{path} mode 0{0o20000 | mode:o}"]
        names = names + [path]
    lines.append("cd /")
    for path in ["."] + names:
        target = "/" if path == "." else f"/{path}"
        lines.append(f"sif {target} uid 0")
        lines.append(f"sif {target} gid 0")
    return "\n".join(lines) + "\n"


def build_rootfs(path: Path, size_mib: int = DEFAULT_SIZE_MIB, progress: Optional[Progress] = None,
                 programs: Sequence[GuestProgram] = DEFAULT_PROGRAMS) -> Path:
    """Write an ext4 root disk image of `size_mib` MiB to `path` (replacing it) and return `path`.

    `programs` are Debian programs put next to busybox, with their libraries (guest_programs.py).
    """
    if size_mib < 8:
        raise ImageError(f"a {size_mib} MiB root disk is too small: use 8 MiB or more")
    path = Path(path)
    mke2fs, debugfs = _tool("mke2fs"), _tool("debugfs")
    busybox = fetch_busybox(progress)
    trees = [fetch_program(program, progress) for program in programs]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xvm-rootfs-", dir=str(path.parent)) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        names = _stage(root, busybox, trees)
        image = Path(tmp) / "rootfs.img"
        with open(image, "wb") as out:
            out.truncate(size_mib << 20)
        script = Path(tmp) / "debugfs.cmds"
        script.write_text(_debugfs_script(names))
        steps = (
            [mke2fs, "-q", "-F", "-t", "ext4", "-L", LABEL, "-d", str(root), str(image)],
            [debugfs, "-w", "-f", str(script), str(image)],
        )
        for command in steps:
            result = subprocess.run(command, capture_output=True, text=True)
            # debugfs reports a failed command on stderr but still exits 0.
            errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
            if result.returncode != 0 or errors:
                detail = (errors or [result.stderr.strip() or f"exit status {result.returncode}"])[-1]
                raise ImageError(f"building the root disk: {Path(command[0]).name} failed ({detail})")
        os.replace(image, path)
    return path
