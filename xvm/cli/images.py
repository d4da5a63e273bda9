"""`xvm images build|list|pull`: the default guest in the cache.

    xvm images build            build the minimal kernel, fetch busybox, write the initramfs
    xvm images build --force    rebuild even if the cache has them
    xvm images pull --debian    fetch Debian's linux-image-cloud-amd64 instead of building
    xvm images list             what is cached: path, size, kind, kernel release, config hash
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xvm.errors import ConfigError
from xvm.images import cache_dir, default_guest
from xvm.images.busybox import busybox_version, fetch_busybox
from xvm.images.debian_kernel import find_debian_kernel, pull_debian_kernel
from xvm.images.initramfs import build_initramfs, initramfs_path
from xvm.images.kernel import build_kernel, find_kernel
from xvm.images.progress import Progress
from xvm.images.rootfs import build_rootfs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("images", help="build, fetch and list the default guest")
    commands = parser.add_subparsers(dest="images_command", metavar="SUBCOMMAND")
    build = commands.add_parser("build", help="build the minimal kernel and the busybox initramfs")
    build.add_argument("--force", action="store_true", help="rebuild even when the cache has a current build")
    build.add_argument("--debian", action="store_true", help="also fetch Debian's cloud kernel (as pull --debian)")
    build.set_defaults(func=_build)
    listing = commands.add_parser("list", help="show what the cache holds")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_list)
    pull = commands.add_parser("pull", help="fetch a ready-made kernel instead of building one")
    pull.add_argument("--debian", action="store_true", help="Debian's linux-image-cloud-amd64 (required)")
    pull.add_argument("--force", action="store_true", help="unpack again even when cached")
    pull.set_defaults(func=_pull)
    rootfs = commands.add_parser("rootfs", help="build an ext4 root disk with busybox (boot it with --disk PATH "
                                 "--append 'root=/dev/vda rw console=ttyS0')")
    rootfs.add_argument("path", type=Path, help="image file to create")
    rootfs.add_argument("--size", type=int, default=64, help="size in MiB (default 64)")
    rootfs.set_defaults(func=_rootfs)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _build(args: argparse.Namespace) -> int:
    progress = Progress()
    fetch_busybox(progress, force=args.force)
    kernel = build_kernel(progress, force=args.force)
    if args.debian:
        pull_debian_kernel(progress, force=args.force)
    initrd = build_initramfs(progress)
    print(f"kernel: {kernel / 'bzImage'}")
    print(f"initrd: {initrd}")
    return 0


def _rootfs(args: argparse.Namespace) -> int:
    image = build_rootfs(args.path, args.size, Progress())
    print(f"root disk: {image}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    if not args.debian:
        raise ConfigError("xvm images pull needs --debian (the only kernel it can fetch)")
    progress = Progress()
    fetch_busybox(progress, force=args.force)
    kernel = pull_debian_kernel(progress, force=args.force)
    images = default_guest(build=False, progress=progress, kind="debian")
    print(f"kernel: {kernel / 'bzImage'}")
    print(f"initrd: {images.initrd}")
    return 0


def _entries() -> list:
    """One dict per cached artefact, kernels first (newest first)."""
    entries = []
    current = {find_kernel(), find_debian_kernel()}
    kernels = sorted((cache_dir() / "kernels").glob("*/info.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for info_path in kernels:
        info = json.loads(info_path.read_text())
        image = info_path.parent / "bzImage"
        if not image.is_file():
            continue
        entries.append(
            {
                "path": str(image),
                "size": image.stat().st_size,
                "kind": info.get("kind", "?"),
                "release": info.get("release", "?"),
                "config_hash": info.get("config_hash", ""),
                "current": info_path.parent in current,
                "source": info.get("source", ""),
            }
        )
    initrd = initramfs_path()
    if initrd.is_file():
        entries.append(
            {
                "path": str(initrd),
                "size": initrd.stat().st_size,
                "kind": "initramfs",
                "release": f"busybox {busybox_version() or '?'}",
                "config_hash": "",
                "current": True,
                "source": "xvm/images/initramfs.py",
            }
        )
    return entries


def _list(args: argparse.Namespace) -> int:
    entries = _entries()
    if args.json:
        print(json.dumps({"cache": str(cache_dir()), "images": entries}, indent=2))
        return 0
    print(f"cache: {cache_dir()}")
    if not entries:
        print("nothing cached: run `xvm images build` (or `xvm images pull --debian`)")
        return 0
    rows = [("KIND", "RELEASE", "SIZE", "CONFIG", "PATH")]
    for entry in entries:
        kind = entry["kind"] + ("" if entry["current"] else " (stale)")
        size = f"{entry['size'] / 1048576:.1f} MiB"
        rows.append((kind, entry["release"], size, entry["config_hash"] or "-", entry["path"]))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0
