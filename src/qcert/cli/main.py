"""Entry point of the ``qcert`` command: discovers the command modules in this package.

A command module defines ``register(subparsers)`` which adds its parser with
``set_defaults(func=run)``; ``run(args) -> int`` does the work by calling the library. Errors: one
line on stderr, exit code 2 for usage errors and bad input (a :class:`~qcert.errors.QcertError`), 1
for anything unexpected (``internal error: ... (run with --debug ...)``); ``--debug`` shows the
traceback. A usage error (an unknown option, a bad value, a missing argument) is one line too, exit
code 2; ``--help`` prints the whole usage.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from typing import NoReturn

import qcert
import qcert.cli
from qcert.errors import QcertError


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``qcert verify: error: ...``) and exit
    code 2, not argparse's usage block; subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="qcert",
        description="Certifiably robust quantized neural networks: train, verify, certify, ship.",
    )
    parser.add_argument("--version", action="version", version=f"qcert {qcert.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(qcert.cli.__path__), key=lambda m: m.name):
        if info.name in ("main", "common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"qcert.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        print("qcert: error: give a command (see qcert --help)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except QcertError as e:
        if args.debug:
            traceback.print_exc()
        print(f"qcert {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qcert {args.command}: interrupted; finished results are saved", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(
                f"qcert {args.command}: internal error: {type(e).__name__}: {_one_line(str(e))} "
                "(run with --debug for the traceback)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
