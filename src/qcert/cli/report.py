"""``qcert report RESULT... --out DIR``: PNG plots and an index.html from result files."""

from __future__ import annotations

import argparse

from qcert.cli.common import add_command, check_outputs


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "report",
        "plots and an HTML page from verify JSONL, smoothing TSV and metrics.json files",
        __doc__,
    )
    p.add_argument("results", nargs="+", help="result files")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qcert.report import build_report

    check_outputs(list(args.results), {}, folders={"--out": args.out})
    page = build_report(args.results, args.out)
    print(f"report written to {page}")
    return 0
