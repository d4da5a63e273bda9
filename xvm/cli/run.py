"""`xvm run`: boot a guest (the default Linux guest unless --kernel is given).

    xvm run                          interactive shell on the serial console (Ctrl-A x quits)
    xvm run -- uname -a              run a command in the guest; exit with its status
    xvm run --kernel guest.elf       boot your own bzImage or multiboot kernel

Exit status: the command's status with `--`; 0 when the guest powers off or
resets; (v << 1) | 1 when a guest writes v to the debug-exit port (QEMU's
isa-debug-exit convention); 2 for usage errors; 3 for host/KVM problems;
4 when the VM fails (triple fault, failed VM entry: a register dump follows);
124 on --timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path

from xvm.config import DEFAULT_CMDLINE, ENGINES, BootConfig, DiskConfig, MachineConfig, NetConfig, parse_mem_size
from xvm.errors import ConfigError
from xvm.machine.builder import choose_engine
from xvm.machine.console import Console
from xvm.machine.machine import Machine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="boot a VM (the default Linux guest unless --kernel is given)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kernel", type=Path, help="bzImage or multiboot kernel (default: the built-in guest)")
    parser.add_argument("--initrd", type=Path, help="initramfs (or multiboot module)")
    parser.add_argument("--append", default=None, help=f"kernel command line (default: {DEFAULT_CMDLINE!r})")
    parser.add_argument("--mem", default="256M", help="guest RAM, e.g. 256M or 2G (default 256M)")
    parser.add_argument("--cpus", type=int, default=1, help="number of vCPUs (default 1)")
    parser.add_argument("--engine", choices=ENGINES, default="auto", help="kvm, bt, or auto (default)")
    parser.add_argument("--timeout", type=float, default=None, help="stop the VM after this many seconds")
    parser.add_argument("--disk", action="append", default=[], metavar="PATH[,ro][,cache=none|writeback]",
                        help="virtio-blk disk (repeatable)")
    parser.add_argument("--net", action="append", default=[], metavar="tap[=NAME]|user[,mac=MAC]",
                        help="virtio-net interface")
    parser.add_argument("--virtio-console", action="store_true",
                        help="add a virtio-console device (use console=hvc0 on the kernel command line)")
    parser.add_argument("--clock", choices=("virtual", "host"), default="virtual", help="bt engine time source")
    parser.add_argument("--stats", action="store_true", help="print engine and exit statistics at the end")
    parser.add_argument("--trace", action="store_true", help="bt engine: print every guest instruction")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...: run CMD in the guest")
    parser.set_defaults(func=main)


def _parse_disk(text: str) -> DiskConfig:
    path, *options = text.split(",")
    read_only, cache = False, "writeback"
    for option in options:
        if option == "ro":
            read_only = True
        elif option.startswith("cache="):
            cache = option[len("cache="):]
        else:
            raise ConfigError(f"--disk option {option!r} is unknown: use ro or cache=none|writeback")
    return DiskConfig(Path(path), read_only, cache)


def _parse_net(text: str) -> NetConfig:
    """tap[=NAME][,mac=XX:XX:XX:XX:XX:XX] or user[,mac=...]."""
    spec, *options = text.split(",")
    mode, _, name = spec.partition("=")
    mac = None
    for option in options:
        if option.startswith("mac="):
            mac = option[len("mac="):]
        else:
            raise ConfigError(f"--net option {option!r} is unknown: use mac=XX:XX:XX:XX:XX:XX")
    return NetConfig(mode, name or None, mac)


def config_from_args(args: argparse.Namespace) -> MachineConfig:
    """MachineConfig from parsed flags (validated)."""
    if args.initrd is not None and args.kernel is None:
        raise ConfigError("--initrd needs --kernel (the default guest brings its own initramfs)")
    boot = BootConfig(args.kernel, args.initrd, args.append if args.append is not None else DEFAULT_CMDLINE)
    return MachineConfig(
        mem_mib=parse_mem_size(args.mem), cpus=args.cpus, engine=args.engine, boot=boot,
        disks=tuple(_parse_disk(d) for d in args.disk), nets=tuple(_parse_net(n) for n in args.net),
        virtio_console=args.virtio_console, timeout=args.timeout, clock=args.clock, stats=args.stats, trace=args.trace,
    ).validate()


def _command_from_args(args: argparse.Namespace):
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if command:
        return command
    if args.kernel is None and not sys.stdin.isatty():
        from xvm.images import DEMO_COMMAND

        print("xvm: no terminal and no command: running a short demo (xvm run -- CMD runs your own)",
              file=sys.stderr)
        return list(DEMO_COMMAND)
    return None


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    engine = choose_engine(config.engine)
    reexec_under_pypy(engine)
    config = replace(config, engine=engine)
    command = _command_from_args(args)
    console = Console(echo=True, capture=False)
    # SIGTERM/SIGHUP must unwind through `finally` so the terminal is restored.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_keyboard_interrupt)
    with Machine(config, console=console, command=command) as machine:
        machine.build()
        interactive = command is None and console.start_input(machine.deliver_console_input, machine.stop)
        if interactive:
            print("xvm: serial console attached (Ctrl-A x quits, Ctrl-A h helps)\r", file=sys.stderr)
        result = machine.run()
        console.close()
        if result.reason not in ("debug-exit", "stopped") and (result.exit_code or args.stats):
            print(f"xvm: {result.message}", file=sys.stderr)
        if result.dump:
            print(result.dump, file=sys.stderr)
        if args.stats:
            print(json.dumps(machine.stats(), indent=2), file=sys.stderr)
        return result.exit_code


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


#: PyPy's GC settings for the bt engine. The default nursery (half the L2 cache,
#: 1 MB here) made minor collections a quarter of a Linux boot's CPU time: every
#: guest register write stores a fresh integer into an old list. 16 MB cut the
#: GC's share to ~4 % (PyPy's gc.get_stats(), 15M-instruction boot prefix).
PYPY_GC_ENV = {"PYPY_GC_NURSERY": "16M"}


def reexec_under_pypy(engine: str) -> None:
    """Run the bt engine under PyPy, with PYPY_GC_ENV, when `pypy3` is installed.

    The bt engine is written for PyPy's JIT and needs only the standard
    library, so the same package runs there unchanged. XVM_NO_PYPY=1 keeps
    the current interpreter; a PyPy started without PYPY_GC_ENV (a benchmark
    running `pypy3 -m xvm`) re-executes itself once with it, since the GC
    reads it only at startup.
    """
    if engine != "bt":
        return
    missing = {name: value for name, value in PYPY_GC_ENV.items() if name not in os.environ}
    if platform.python_implementation() == "PyPy":
        pypy = sys.executable if missing else None
    elif os.environ.get("XVM_NO_PYPY"):
        pypy = None
    else:
        pypy = shutil.which("pypy3")
    if pypy is None:
        return
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, XVM_NO_PYPY="1", **missing)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(pypy, [pypy, "-m", "xvm", *sys.argv[1:]], env)
