"""Helpers shared by the command modules: argument types, output path checks, JSON output, dataset
loading."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from rich.console import Console

from qcert.errors import InputError
from qcert.runs import check_output_file, check_output_folder

console = Console(stderr=True)


def _int_at_least(lowest: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lowest:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


#: argparse types: an integer ≥ 1 / ≥ 0, with a one-line message otherwise
positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "a non-negative integer")


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def check_outputs(
    inputs: list[str | None],
    outputs: dict[str, str | None],
    folders: dict[str, str | None] | None = None,
) -> None:
    """The one output-path check of every command, called before any work: each output file
    given (``{"--out": path}``, ``None`` when not given) has an existing folder, can be written,
    is not a folder and is not one of ``inputs``; each output folder (``folders``) is a folder or
    can be created as one, and is not one of ``inputs``. A problem is one error line and exit
    code 2, and no file is created or changed."""
    for what, path in outputs.items():
        if path is not None:
            check_output_file(path, inputs=inputs, what=what)
    for what, path in (folders or {}).items():
        if path is not None:
            check_output_folder(path, inputs=inputs, what=what)


def add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="spread samples over a Ray cluster (a local one when no address is given)",
    )
    p.add_argument("--workers", type=positive_int, default=None, help="CPUs of a local Ray")


def add_dataset_args(p: argparse.ArgumentParser, split: bool = True) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        help="mnist, digits, mnist-idx, fashion-mnist, cifar10, image-folder",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="folder with the dataset files (IDX, CIFAR; image-folder: ROOT/split/class/*.png|jpg, "
        "resized and center-cropped to the model's input size)",
    )
    if split:
        p.add_argument("--split", default="test", choices=["train", "test"])


def load_dataset_for(net: Any, name: str, split: str, root: str | None, n: int | None = None):
    """Load a dataset and check its image shape against the network's input shape.

    A network imported from onnxruntime takes its input quantizer's codes; the dataset's pixels
    are those codes only when ``meta["onnxruntime"]["pixels_are_codes"]`` (docs/export.md), else
    this raises :class:`InputError` rather than feed the network inputs it was not given."""
    from qcert.data import load

    ort = net.meta.get("onnxruntime") if isinstance(getattr(net, "meta", None), dict) else None
    if isinstance(ort, dict) and not ort.get("pixels_are_codes", False):
        i = ort.get("input", {})
        raise InputError(
            f"this model was imported from onnxruntime and quantizes its float input with scale "
            f"{i.get('scale')} and zero point {i.get('zero_point')} ({i.get('type')}): dataset "
            "pixels are not its input codes; map images with qcert.quant.quantize_linear"
        )

    shape_in = tuple(net.input_shape)
    if name == "image-folder" and len(shape_in) == 3 and shape_in[0] in (1, 3):
        ds = load(
            name, split, root=root, n=n, size=(shape_in[1], shape_in[2]), channels=shape_in[0]
        )
    else:
        ds = load(name, split, root=root, n=n)
    shape = tuple(ds.images.shape[1:])
    if shape != tuple(net.input_shape) and (math.prod(shape),) != tuple(net.input_shape):
        raise InputError(
            f"dataset {name} has images of shape {shape}, the model expects {tuple(net.input_shape)}"
        )
    images = ds.images.reshape(ds.images.shape[0], *net.input_shape)
    return images, ds.labels, ds


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def add_command(
    sub: argparse._SubParsersAction, name: str, summary: str, doc: str | None, raw: bool = False
) -> argparse.ArgumentParser:
    """A ``qcert NAME`` subcommand: ``summary`` in the command list, the module's ``doc`` on
    ``--help`` (kept as written with ``raw``)."""
    extra: dict = {"formatter_class": argparse.RawDescriptionHelpFormatter} if raw else {}
    return sub.add_parser(name, help=summary, description=doc, **extra)


def add_onnx_checks(parser: argparse.ArgumentParser, inexact: str, check: str) -> None:
    """The two options of the ONNX commands: ``--allow-inexact`` and ``--check N``."""
    parser.add_argument("--allow-inexact", action="store_true", help=inexact)
    parser.add_argument("--check", type=nonneg_int, default=256, help=check)
