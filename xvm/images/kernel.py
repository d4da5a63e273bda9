"""The minimal guest kernel: Debian's linux-source-6.1 built with xvm's config fragment.

Recipe (about 3-5 minutes on 2 cores):
  1. extract /usr/src/linux-source-6.1.tar.xz into the cache (once per source
     version and patch set) and apply xvm/images/patches/*.patch;
  2. `make tinyconfig`, merge kernel.config with scripts/kconfig/merge_config.sh -m,
     `make olddefconfig`, then check that every option the fragment asks for
     survived (Kconfig silently drops options whose dependencies are unmet);
  3. `make -j$(nproc) bzImage` and copy bzImage, .config and vmlinux into
     kernels/minimal-<key>/, where key hashes the fragment, the patches and the
     source version, so editing any of them builds a new kernel.

The tree is kept, so a rebuild after a fragment edit is incremental.
"""

from __future__ import annotations

import collections
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from xvm.errors import ImageError
from xvm.images import debian
from xvm.images.cache import cache_dir
from xvm.images.progress import Progress

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
# Build dependencies of a tinyconfig x86-64 kernel: Kconfig needs flex/bison, the
# timeconst header bc, objtool libelf, certs/extract-cert libssl.
BUILD_PACKAGES = ("make", "gcc", "bc", "flex", "bison", "libelf-dev", "libssl-dev")
FRAGMENT = Path(__file__).with_name("kernel.config")
PATCHES = Path(__file__).with_name("patches")
KIND = "minimal"

_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.+)$")
_NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
# make's short progress lines: "  CC      kernel/fork.o", "  LD      vmlinux".
_MAKE_STEP = re.compile(r"^\s+([A-Z][A-Z0-9_]*)\s+(\S+)")


@dataclass(frozen=True)
class KernelSource:
    tarball: Path
    version: str  # Debian version of linux-source-6.1, e.g. "6.1.192-2"


def parse_fragment(text: str) -> dict[str, str]:
    """Map each option of a config fragment to its value ("y", "n" for "is not set", or a literal).

    Raises ValueError on a line that is neither an option, a "# ... is not set"
    line, a comment nor blank, so a typo cannot silently vanish.
    """
    options: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        match = _OPTION.match(line)
        if match:
            options[match.group(1)] = match.group(2)
            continue
        match = _NOT_SET.match(line)
        if match:
            options[match.group(1)] = "n"
            continue
        if line and not (line.startswith("#") and "CONFIG_" not in line):
            raise ValueError(f"line {number}: not a config option: {raw!r}")
    return options


def check_config(config: str, wanted: dict[str, str]) -> tuple[list[str], list[str]]:
    """Compare a final .config with the fragment.

    Returns (dropped, unwanted): options the fragment sets that .config lacks or
    sets differently, and options the fragment turns off that ended up on.
    """
    final = parse_fragment(
        "\n".join(line for line in config.splitlines() if _OPTION.match(line) or _NOT_SET.match(line))
    )
    dropped = [f"{name}={value}" for name, value in wanted.items() if value != "n" and final.get(name, "n") != value]
    unwanted = [
        f"{name}={final[name]}" for name, value in wanted.items() if value == "n" and final.get(name, "n") != "n"
    ]
    return dropped, unwanted


def patches() -> list[Path]:
    return sorted(PATCHES.glob("*.patch")) if PATCHES.is_dir() else []


def _digest(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()[:12]


def patch_hash() -> str:
    return _digest([item for path in patches() for item in (path.name.encode(), path.read_bytes())])


def fragment_hash() -> str:
    """Hash of the recipe without the source version: fragment + patches."""
    return _digest([FRAGMENT.read_bytes(), patch_hash().encode()])


def config_hash(source_version: str) -> str:
    """The cache key of a minimal kernel: fragment + patches + source version."""
    return _digest([fragment_hash().encode(), source_version.encode()])


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def find_kernel() -> Optional[Path]:
    """The directory of the built minimal kernel matching the current recipe, if any.

    When linux-source is no longer installed, any build of the same fragment and
    patches will do.
    """
    version = debian.installed_version(SOURCE_PACKAGE)
    if version is not None:
        directory = kernels_dir() / f"{KIND}-{config_hash(version)}"
        return directory if (directory / "bzImage").is_file() else None
    fragment = fragment_hash()
    for info_path in sorted(kernels_dir().glob(f"{KIND}-*/info.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        info = json.loads(info_path.read_text())
        if info.get("fragment_hash") == fragment and (info_path.parent / "bzImage").is_file():
            return info_path.parent
    return None


def _apt_install(packages: list[str], progress: Optional[Progress]) -> None:
    if progress is not None:
        progress.message(f"installing {' '.join(packages)} with apt-get")
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0:
        raise ImageError(
            f"apt-get install {' '.join(packages)} failed ({result.stderr.strip()[-200:]}): "
            "run `sudo apt-get update` and retry"
        )


def locate_source(progress: Optional[Progress] = None) -> KernelSource:
    """Find linux-source-6.1 and the build tools, installing them when running as root."""
    missing = [name for name in (SOURCE_PACKAGE, *BUILD_PACKAGES) if debian.installed_version(name) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install(missing, progress)
        missing = [name for name in missing if debian.installed_version(name) is None]
    if missing or not SOURCE_TARBALL.is_file():
        raise ImageError(
            f"building the default guest kernel needs {' '.join(missing or [SOURCE_PACKAGE])}: "
            f"sudo apt-get install {SOURCE_PACKAGE} {' '.join(BUILD_PACKAGES)} (or use `xvm images pull --debian`)"
        )
    version = debian.installed_version(SOURCE_PACKAGE)
    assert version is not None
    return KernelSource(SOURCE_TARBALL, version)


def _extract(source: KernelSource, tree: Path, progress: Optional[Progress]) -> None:
    """Unpack the source tarball into `tree` and apply xvm's patches."""
    work = tree.parent
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(work), prefix=".extract-") as tmp:
        if progress is not None:
            progress.stage(f"extracting {source.tarball.name}")
        total = source.tarball.stat().st_size
        # Feed tar through a pipe so the bar follows the compressed bytes read.
        tar = subprocess.Popen(["tar", "-xJf", "-", "-C", tmp], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert tar.stdin is not None
        done = 0
        with source.tarball.open("rb") as tarball:
            for chunk in iter(lambda: tarball.read(1 << 20), b""):
                try:
                    tar.stdin.write(chunk)
                except BrokenPipeError:
                    break
                done += len(chunk)
                if progress is not None:
                    progress.update(done, total)
        tar.stdin.close()
        if tar.wait() != 0:
            raise ImageError(
                f"cannot extract {source.tarball}: {tar.stderr.read().decode().strip()[-200:]}; "
                f"reinstall {SOURCE_PACKAGE}"
            )
        top = [entry for entry in Path(tmp).iterdir()]
        if len(top) != 1 or not top[0].is_dir():
            raise ImageError(f"{source.tarball} does not hold one source directory: reinstall {SOURCE_PACKAGE}")
        for patch in patches():
            result = subprocess.run(
                ["patch", "-p1", "--forward", "--batch", "-i", str(patch)],
                cwd=str(top[0]),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            if result.returncode != 0:
                raise ImageError(
                    f"{patch.name} does not apply to {SOURCE_PACKAGE} {source.version}: {result.stdout.strip()[-300:]}"
                )
        if tree.exists():
            shutil.rmtree(tree)
        top[0].rename(tree)
        if progress is not None:
            progress.done()


def _run_make(tree: Path, args: list[str], log: Path, progress: Optional[Progress]) -> None:
    """Run make in `tree`, niced, logging everything and showing the last target built."""
    env = dict(os.environ, KBUILD_BUILD_USER="xvm", KBUILD_BUILD_HOST="xvm", LC_ALL="C")
    tail: collections.deque = collections.deque(maxlen=30)
    with log.open("a") as out:
        out.write(f"$ make {' '.join(args)}\n")
        out.flush()
        process = subprocess.Popen(
            ["nice", "-n", "10", "make", *args],
            cwd=str(tree),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            tail.append(line.rstrip())
            step = _MAKE_STEP.match(line)
            if progress is not None and step:
                progress.note(f"{step.group(1)} {step.group(2)}")
        if process.wait() != 0:
            errors = [line for line in tail if "error" in line.lower()] or list(tail)[-5:]
            raise ImageError(f"make {' '.join(args)} failed: {' | '.join(errors[-3:])} (full log: {log})")


def build_kernel(progress: Optional[Progress] = None, force: bool = False) -> Path:
    """Build (or find) the minimal kernel and return its cache directory (bzImage, config, vmlinux, info.json)."""
    source = locate_source(progress)
    key = config_hash(source.version)
    target = kernels_dir() / f"{KIND}-{key}"
    if (target / "bzImage").is_file() and not force:
        return target
    work = cache_dir() / "work"
    work.mkdir(parents=True, exist_ok=True)
    with (work / ".lock").open("w") as lock:
        # One build at a time per cache: a second xvm waits, then finds the result.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "bzImage").is_file() and not force:
            return target
        tree = work / f"linux-{source.version}-{patch_hash()[:8]}"
        if not (tree / "Makefile").is_file():
            _extract(source, tree, progress)
        log = tree / "xvm-build.log"
        log.write_text("")
        fragment = parse_fragment(FRAGMENT.read_text())
        if progress is not None:
            progress.stage("configuring the kernel (tinyconfig + kernel.config)")
        _run_make(tree, ["tinyconfig"], log, None)
        result = subprocess.run(
            ["scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)],
            cwd=str(tree),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with log.open("a") as out:
            out.write(result.stdout)
        if result.returncode != 0:
            raise ImageError(f"merge_config.sh failed (log: {log}): check {FRAGMENT.name}")
        _run_make(tree, ["olddefconfig"], log, None)
        dropped, unwanted = check_config((tree / ".config").read_text(), fragment)
        if dropped:
            raise ImageError(
                f"Kconfig dropped {', '.join(dropped)} (unmet dependencies): fix {FRAGMENT} and run `xvm images build`"
            )
        if progress is not None:
            progress.done()
            for option in unwanted:
                progress.message(f"warning: {option} is on although {FRAGMENT.name} turns it off")
            progress.stage(f"building the kernel (make -j{os.cpu_count() or 1} bzImage)")
        _run_make(tree, [f"-j{os.cpu_count() or 1}", "bzImage"], log, progress)
        release = (tree / "include" / "config" / "kernel.release").read_text().strip()
        staging = Path(tempfile.mkdtemp(dir=str(work), prefix=".kernel-"))
        shutil.copy2(str(tree / "arch" / "x86" / "boot" / "bzImage"), str(staging / "bzImage"))
        shutil.copy2(str(tree / ".config"), str(staging / "config"))
        shutil.copy2(str(tree / "vmlinux"), str(staging / "vmlinux"))
        info = {
            "kind": KIND,
            "release": release,
            "source": f"{SOURCE_PACKAGE} {source.version}",
            "config_hash": key,
            "fragment_hash": fragment_hash(),
            "patches": [path.name for path in patches()],
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        # Trees of other source versions or patch sets would only be used again by
        # an older recipe; each is about 1.6 GB. Safe to remove under the lock.
        for other in work.glob("linux-*"):
            if other != tree and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
        if progress is not None:
            progress.done(f"{release}, bzImage {(target / 'bzImage').stat().st_size // 1024} KiB")
        return target
