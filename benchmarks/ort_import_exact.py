"""A PyTorch MNIST model → onnxruntime ``quantize_static`` → ``qcert`` import: is qcert's
``integer_forward`` onnxruntime's output, bit for bit, on the 10,000 MNIST test images?

Trains a small float CNN (conv-relu-maxpool ×2, two linear layers) for ``--epochs`` on MNIST
(``qcert.data.load("mnist")``, pixels scaled to [0, 1] by x/255), exports it to ONNX, quantizes it
with ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, calibrated on 500
training images), once with full-range weights (onnxruntime's default) and once with
``reduce_range=True`` (7-bit weights), imports each with ``qcert.export.from_onnx`` and compares,
on the float test images as a user would feed them:

* onnxruntime's ``QuantizeLinear`` of the images with :func:`qcert.quant.quantize_linear` (the
  imported network's input codes);
* onnxruntime's logits (``DequantizeLinear`` of the output codes) with ``integer_forward``.

Prints the number of mismatching logits (of 100,000) and both accuracies.

    PYTHONPATH=src python benchmarks/ort_import_exact.py [--epochs 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qcert.data import load
from qcert.export import from_onnx, session
from qcert.export.runtime import dequantize
from qcert.quant import argmax_first, quantize_linear


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def train(m: nn.Module, epochs: int) -> None:
    ds = load("mnist", "train")
    x, y = ds.images.float() / 255, ds.labels
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for s in range(0, len(y), 128):
            i = perm[s : s + 128]
            loss = nn.functional.cross_entropy(m(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"trained {epochs} epoch(s) in {time.perf_counter() - t0:.0f} s")


def quantize(float_path: Path, out: Path, reduce_range: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calib = (load("mnist", "train", n=500).images.float() / 255).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"input": x}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(
            str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
        )  # fmt: skip


def ort_quantize_linear(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """onnxruntime's own QuantizeLinear of ``x`` (a one-node graph), to check the emulation."""
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, list(x.shape))],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(zp, np.uint8), "z")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return session(m).run(None, {"x": x})[0].astype(np.int64)


def compare(path: Path, images: np.ndarray, labels: torch.Tensor) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = from_onnx(path)
    for w in caught:
        print(f"  import warning: {str(w.message)[:160]}...")
    io = net.meta["onnxruntime"]
    i, o = io["input"], io["output"]
    codes = quantize_linear(images, i["scale"], i["zero_point"], 0, 255)
    same_in = np.array_equal(codes, ort_quantize_linear(images, i["scale"], i["zero_point"]))
    pixels = np.rint(images * 255).astype(np.int64)
    print(
        f"  input codes equal onnxruntime's QuantizeLinear: {same_in}; equal the raw pixels: "
        f"{np.array_equal(codes, pixels)} (pixels_are_codes: {io['pixels_are_codes']})"
    )
    t0 = time.perf_counter()
    ours = net.integer_forward(torch.from_numpy(codes).view(-1, *net.input_shape))
    t1 = time.perf_counter()
    theirs = session(path).run(None, {"input": images})[0]
    t2 = time.perf_counter()
    ours_f = dequantize(ours.numpy(), o["scale"], o["zero_point"])
    bad = int((ours_f != theirs).sum())
    rows = int((ours_f != theirs).any(axis=1).sum())
    acc_q = float((argmax_first(ours) == labels).float().mean())
    acc_o = float((torch.from_numpy(theirs).argmax(1) == labels).float().mean())
    print(
        f"  mismatching logits: {bad} of {theirs.size} ({rows} of {len(labels)} images); "
        f"accuracy qcert {acc_q:.4f}, onnxruntime {acc_o:.4f}; "
        f"integer_forward {t1 - t0:.1f} s, onnxruntime {t2 - t1:.1f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workdir", default=None, help="where the ONNX files go (default: temporary)")
    args = p.parse_args()
    torch.set_num_threads(2)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ort_import_"))
    work.mkdir(parents=True, exist_ok=True)
    m = model()
    train(m, args.epochs)
    m.eval()
    f = work / "mnist_float.onnx"
    torch.onnx.export(
        m, torch.rand(1, 1, 28, 28), f, dynamo=False, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        opset_version=17,
    )  # fmt: skip
    test = load("mnist", "test")
    images = (test.images.float() / 255).numpy()
    with torch.no_grad():
        acc_f = float((m(torch.from_numpy(images)).argmax(1) == test.labels).float().mean())
    print(f"float model accuracy {acc_f:.4f}")
    for reduce_range in (False, True):
        q = work / f"mnist_qdq_perchannel_u8{'_reduced' if reduce_range else ''}.onnx"
        quantize(f, q, reduce_range)
        print(f"quantize_static QDQ per-channel uint8, reduce_range={reduce_range} ({q.name}):")
        compare(q, images, test.labels)
    onnx.checker.check_model(str(f))


if __name__ == "__main__":
    main()
