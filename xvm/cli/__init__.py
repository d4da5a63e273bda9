"""The `xvm` command line: one module per subcommand.

Each subcommand module exposes `register(subparsers)`, which adds its parser
and sets `func` to a handler `(args) -> int`. main() turns every XvmError into
one line on stderr and the error's exit code; a traceback appears only with
--debug.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional

from xvm.errors import XvmError

SUBCOMMANDS = ("run", "doctor", "images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xvm", description="x86 virtualization in Python: run guests on KVM or by binary translation."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"xvm.cli.{name}").register(subparsers)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="xvm: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except XvmError as error:
        if args.debug:
            raise
        print(f"xvm: error: {error}", file=sys.stderr)
        dump = getattr(error, "dump", "")
        if dump:
            print(dump, file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
