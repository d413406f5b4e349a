"""Running an exported model in onnxruntime: sessions, logits, the ``onnx`` executor, and the
comparison with the reference executor."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch

from qcert.errors import InputError, ModelFileError
from qcert.export.exporter import onnx_model
from qcert.quant import QNetwork, argmax_first
from qcert.quant.executor import check_executor

_NP_OF_ORT: dict[str, Any] = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}
#: onnxruntime graph optimization levels by name; "all" is onnxruntime's default. QDQ graphs are
#: fused into integer kernels (QGemm, QLinearConv) from "extended" on.
OPTIMIZATION_LEVELS = ("none", "basic", "extended", "all")


def session(
    model: onnx.ModelProto | str | os.PathLike[str],
    optimization: str = "all",
    threads: int | None = None,
) -> Any:
    """An onnxruntime CPU inference session at a graph optimization level (see
    :data:`OPTIMIZATION_LEVELS`)."""
    import onnxruntime as ort

    levels = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise InputError(
            f"unknown optimization level {optimization!r}; expected one of "
            + ", ".join(OPTIMIZATION_LEVELS)
        )
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = levels[optimization]
    if threads is not None:
        so.intra_op_num_threads = threads
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    try:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelFileError(f"onnxruntime cannot load the model: {e}") from None


def ort_io(net: QNetwork) -> dict[str, Any] | None:
    """The input and output scale / zero point of a network imported from an onnxruntime
    ``quantize_static`` model (its ``meta["onnxruntime"]``), or None."""
    m = net.meta.get("onnxruntime")
    if (
        isinstance(m, dict)
        and isinstance(m.get("input"), dict)
        and isinstance(m.get("output"), dict)
    ):
        return m
    return None


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """onnxruntime's ``DequantizeLinear`` of codes: ``fl32((q − z) · s)``."""
    return (np.asarray(q, np.int64) - zero_point).astype(np.float32) * np.float32(scale)


def onnx_logits(
    sess: Any,
    x: torch.Tensor,
    batch_size: int = 1000,
    input_frac: int = 0,
    logit_frac: int = 0,
    io: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Logits of the integer inputs ``x`` from an onnxruntime session.

    Integer model inputs get the codes; a float input (a QDQ graph that quantizes its input) gets
    the real values ``x * 2**-input_frac``. Integer outputs come back as int64; float outputs (real
    logits) as float64 ``output * 2**logit_frac``, the integer logits when the graph is exact.

    With ``io`` (:func:`ort_io`: an imported ``quantize_static`` model) the float input gets
    ``fl32((x − z_in) · s_in)``, which the graph's ``QuantizeLinear`` maps back to ``x`` exactly, and
    the float output, ``DequantizeLinear`` of the output codes, is mapped back to those codes (an
    output that is not exactly such a value raises :class:`ModelFileError`).
    """
    inp = sess.get_inputs()[0]
    if io is not None and inp.type == "tensor(float)":
        i, o = io["input"], io["output"]
        arr = dequantize(x.numpy(), i["scale"], i["zero_point"])
        outs = [
            sess.run(None, {inp.name: arr[s : s + batch_size]})[0]
            for s in range(0, arr.shape[0], batch_size)
        ]
        out = np.concatenate(outs) if outs else np.zeros((0,), np.float32)
        if not np.issubdtype(out.dtype, np.floating):
            return torch.from_numpy(out.astype(np.int64))
        q = np.rint(out.astype(np.float64) / np.float64(np.float32(o["scale"]))).astype(np.int64)
        q += int(o["zero_point"])
        if not np.array_equal(dequantize(q, o["scale"], o["zero_point"]), out):
            raise ModelFileError("the model's output is not DequantizeLinear of its output codes")
        return torch.from_numpy(q)
    if inp.type == "tensor(float)":
        arr = (x.to(torch.float64) * 2.0**-input_frac).numpy().astype(np.float32)
    else:
        dt = _NP_OF_ORT.get(inp.type)
        if dt is None:
            raise ModelFileError(f"model input has type {inp.type}, not an integer or float type")
        info = np.iinfo(dt)
        if x.numel() and (int(x.min()) < info.min or int(x.max()) > info.max):
            raise InputError(f"inputs outside the range of the model's {inp.type} input")
        arr = x.to(torch.int64).numpy().astype(dt)
    outs = [
        sess.run(None, {inp.name: arr[s : s + batch_size]})[0]
        for s in range(0, arr.shape[0], batch_size)
    ]
    out = np.concatenate(outs) if outs else np.zeros((0,), np.int64)
    if np.issubdtype(out.dtype, np.floating):
        return torch.from_numpy(out.astype(np.float64) * 2.0**logit_frac)
    return torch.from_numpy(out.astype(np.int64))


class OnnxExecutor:
    """The ``onnx`` executor (:func:`qcert.quant.executor.make_executor`): the model's
    integer-only ONNX graph (MatMulInteger / ConvInteger with integer requantization) in
    onnxruntime, which uses int8 kernels. Built with ``probes`` inputs compared with the reference
    executor; a difference raises :class:`~qcert.errors.QcertError`."""

    def __init__(self, net: QNetwork, probes: int = 256, threads: int | None = None) -> None:
        self.session = session(onnx_model(net, "integer"), threads=threads)
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self._dtype = np.uint8 if inp.type == "tensor(uint8)" else np.int64
        check_executor(self, net, probes, "the ONNX integer graph")

    def logits(self, q: torch.Tensor) -> torch.Tensor:
        # callers pass values inside the input range, which the input dtype holds
        arr = q.numpy().astype(self._dtype, copy=False)
        return torch.from_numpy(self.session.run(None, {self._input_name: arr})[0])


@torch.no_grad()
def compare_onnx(
    net: QNetwork,
    model: onnx.ModelProto | str | os.PathLike[str],
    x: torch.Tensor,
    batch_size: int = 1000,
    optimization: str = "all",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``x`` through onnxruntime (at graph ``optimization`` level) and the reference
    executor; count equal logit rows.

    Returns ``n``, ``equal_logits`` (rows equal bit for bit), ``mismatching_logits`` (values that
    differ), ``equal_predictions``,
    ``max_abs_diff``, and the throughput of both (images/s).
    """
    x = net.check_input(x)
    sess = session(model, optimization)
    io = ort_io(net)
    bad = 0
    n = int(x.shape[0])
    eq_rows = eq_pred = 0
    max_diff: float = 0
    t_ort = t_ref = 0.0
    for s in range(0, n, batch_size):
        xb = x[s : s + batch_size]
        t0 = time.perf_counter()
        got = onnx_logits(sess, xb, batch_size, net.input_format.frac, net.logit_frac, io)
        t1 = time.perf_counter()
        ref = net.integer_forward(xb)
        t2 = time.perf_counter()
        t_ort, t_ref = t_ort + t1 - t0, t_ref + t2 - t1
        if got.shape != ref.shape:
            raise ModelFileError(
                f"the ONNX model returns logits of shape {tuple(got.shape)}, "
                f"expected {tuple(ref.shape)}"
            )
        if got.is_floating_point():  # real logits scaled to integer units, compared in float64
            ref_cmp = ref.to(torch.float64)
        else:
            ref_cmp = ref
        eq_rows += int((got == ref_cmp).all(dim=1).sum())
        bad += int((got != ref_cmp).sum())
        eq_pred += int((argmax_first(got) == argmax_first(ref)).sum())
        if got.numel():
            max_diff = max(max_diff, float((got - ref_cmp).abs().max()))
        if on_batch is not None:
            on_batch(int(xb.shape[0]))
    return {
        "n": n,
        "equal_logits": eq_rows,
        "mismatching_logits": bad,
        "equal_predictions": eq_pred,
        "max_abs_diff": max_diff,
        "onnxruntime_images_per_s": n / t_ort if t_ort > 0 else None,
        "reference_images_per_s": n / t_ref if t_ref > 0 else None,
    }
