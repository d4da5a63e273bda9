"""Fetch and unpack Debian packages without installing them.

`apt-get download` fetches a .deb into the current directory and needs no root;
`dpkg-deb -x` unpacks one anywhere. Both come with every Debian/Ubuntu system,
so the default guest needs no other download tool. apt's own output (its
progress bar on a terminal, "Get:" lines otherwise) goes to stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from xvm.errors import ImageError
from xvm.images.progress import Progress


def require_tool(tool: str, package: str) -> str:
    """Return the path of `tool`, or raise ImageError naming the package to install."""
    path = shutil.which(tool)
    if path is None:
        raise ImageError(
            f"{tool} is not available: the default guest needs Debian's tools (sudo apt-get install {package})"
        )
    return path


def download(package: str, dest: Path, progress: Optional[Progress] = None) -> Path:
    """Fetch `package` (a name, optionally name=version) with `apt-get download` into `dest`."""
    apt_get = require_tool("apt-get", "apt")
    dest.mkdir(parents=True, exist_ok=True)
    command = [apt_get, "download", package]
    if os.geteuid() == 0:
        # apt drops to user _apt for downloads and warns when _apt cannot write to
        # `dest` (e.g. under /root); running as root the download is the same.
        command[1:1] = ["-o", "APT::Sandbox::User=root"]
    if progress is not None:
        progress.stage(f"downloading {package}")
    sys.stderr.flush()
    result = subprocess.run(command, cwd=str(dest), stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit status {result.returncode}"
        hint = (
            "run `sudo apt-get update`"
            if "Unable to locate" in result.stderr or "no installation candidate" in result.stderr
            else "check the network and apt sources"
        )
        raise ImageError(f"apt-get download {package} failed ({reason}): {hint}")
    name = package.split("=")[0]
    debs = sorted(dest.glob(f"{name}_*.deb"), key=lambda path: path.stat().st_mtime)
    if not debs:
        raise ImageError(f"apt-get download {package} left no {name}_*.deb in {dest}: check apt's messages above")
    if progress is not None:
        progress.done(debs[-1].name)
    return debs[-1]


def extract(deb: Path, dest: Path) -> None:
    """Unpack the files of `deb` under `dest` (no maintainer scripts run)."""
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([dpkg_deb, "-x", str(deb), str(dest)], stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ImageError(f"cannot unpack {deb}: {result.stderr.strip()}; delete it and retry")


def field(deb: Path, name: str) -> str:
    """Return a control field (Version, Package, ...) of `deb`."""
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    result = subprocess.run([dpkg_deb, "-f", str(deb), name], capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"cannot read {deb}: {result.stderr.strip()}; delete it and retry")
    return result.stdout.strip()


def depends(package: str) -> list[str]:
    """Return the packages `package` depends on, as `apt-cache depends` lists them."""
    apt_cache = require_tool("apt-cache", "apt")
    result = subprocess.run([apt_cache, "depends", package], capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"apt-cache depends {package} failed ({result.stderr.strip()}): run `sudo apt-get update`")
    return parse_depends(result.stdout)


def parse_depends(text: str) -> list[str]:
    """Pick the package names out of `apt-cache depends` output ("  Depends: name" lines)."""
    names = []
    for line in text.splitlines():
        key, _, value = line.strip().lstrip("|").partition(":")
        if key == "Depends" and value.strip() and not value.strip().startswith("<"):
            names.append(value.strip())
    return names


def installed_version(package: str) -> Optional[str]:
    """Return the installed version of `package`, or None when it is not installed."""
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None:
        return None
    result = subprocess.run(
        [dpkg_query, "-W", "-f=${Status} ${Version}", package],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    words = result.stdout.split()
    if result.returncode != 0 or words[:3] != ["install", "ok", "installed"] or len(words) < 4:
        return None
    return words[3]
