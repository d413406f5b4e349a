"""Importing onnxruntime ``quantize_static`` models (QDQ and QOperator, per-tensor and per-channel,
uint8 and int8 activations): the imported network's ``integer_forward`` equals onnxruntime's output
bit for bit; what cannot be exact on this CPU is flagged; what cannot be expressed is refused; and
``bab`` on an imported model agrees with enumeration."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qcert.errors import InexactExportWarning, ModelFileError
from qcert.export import compare_onnx, from_onnx, random_inputs
from qcert.export.import_ort import pair_saturation_cpu
from qcert.quant import QMaxPool2d, QNetwork, QRescale

ort_q = pytest.importorskip("onnxruntime.quantization")


class _Reader(ort_q.CalibrationDataReader):
    def __init__(self, shape: tuple[int, ...], n: int = 16, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.batches = iter(
            [{"input": rng.random((1, *shape), dtype=np.float32)} for _ in range(n)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


class Cnn(nn.Module):
    """conv-relu-maxpool-conv-relu-flatten-linear (Gemm) on 1×6×6."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        return self.fc(torch.flatten(torch.relu(self.c2(x)), 1))


class GapMlp(nn.Module):
    """conv-relu-global average pool-flatten-linear-relu, then a MatMul without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)  # exported as GlobalAveragePool
        self.fc = nn.Linear(4, 6)
        self.w = nn.Parameter(torch.randn(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gap(torch.relu(self.c1(x)))
        return torch.relu(self.fc(torch.flatten(x, 1))) @ self.w


def quantized(
    tmp: Path,
    module_cls: type[nn.Module],
    fmt: str,
    per_channel: bool,
    act: str,
    reduce_range: bool = True,
    shape: tuple[int, ...] = (1, 6, 6),
    seed: int = 0,
    weights: str = "QInt8",
) -> Path:
    torch.manual_seed(seed)  # the weights depend on the seed only, not on earlier tests
    module = module_cls().eval()
    f = tmp / f"float_{seed}.onnx"
    torch.onnx.export(
        module, torch.rand(1, *shape), f, dynamo=False, input_names=["input"],
        output_names=["out"], dynamic_axes={"input": {0: "n"}, "out": {0: "n"}}, opset_version=17,
    )  # fmt: skip
    out = tmp / f"q_{fmt}_{per_channel}_{act}_{reduce_range}_{seed}_{weights}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort_q.quantize_static(
            str(f), str(out), _Reader(shape, seed=seed),
            quant_format=getattr(ort_q.QuantFormat, fmt), per_channel=per_channel,
            activation_type=getattr(ort_q.QuantType, act),
            weight_type=getattr(ort_q.QuantType, weights),
            reduce_range=reduce_range,
        )  # fmt: skip
    return out


def probes(net: QNetwork, n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lo, hi = net.input_range
    uniform = torch.randint(lo, hi + 1, (n - 100, *net.input_shape), generator=g)
    return torch.cat([random_inputs(net, 100), uniform])


COMBOS = list(itertools.product(["QDQ", "QOperator"], [False, True], ["QUInt8", "QInt8"]))


@pytest.mark.parametrize("fmt,per_channel,act", COMBOS)
def test_cnn_bit_exact(tmp_path: Path, fmt: str, per_channel: bool, act: str) -> None:
    path = quantized(tmp_path, Cnn, fmt, per_channel, act)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reduced range: no saturation warning
        net = from_onnx(path)
    kinds = [layer.kind for layer in net.layers]
    assert "maxpool2d" in kinds and kinds[-1] == "rescale"
    assert net.input_format.signed == (act == "QInt8")
    last = net.layers[-1]
    assert isinstance(last, QRescale) and last.mode == "float32"
    assert (last.channels > 1) == per_channel or not per_channel
    for opt in ("all", "extended"):
        r = compare_onnx(net, path, probes(net), optimization=opt)
        assert r["mismatching_logits"] == 0 and r["equal_logits"] == r["n"] == 300, (opt, r)


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("act", ["QUInt8", "QInt8"])
def test_global_average_pool_and_matmul_bit_exact(tmp_path: Path, fmt: str, act: str) -> None:
    path = quantized(tmp_path, GapMlp, fmt, True, act)
    net = from_onnx(path)
    kinds = [layer.kind for layer in net.layers]
    assert "global_sumpool" in kinds
    r = compare_onnx(net, path, probes(net))
    assert r["mismatching_logits"] == 0, r


@pytest.mark.parametrize("fmt,per_channel", [("QDQ", False), ("QDQ", True), ("QOperator", False)])
def test_uint8_weights_with_zero_points_bit_exact(
    tmp_path: Path, fmt: str, per_channel: bool
) -> None:
    # uint8 × uint8 kernels widen to int16 before multiplying: exact with full-range weights;
    # the weight zero points are folded into the weight codes (w − z_w, int16)
    path = quantized(
        tmp_path, Cnn, fmt, per_channel, "QUInt8", reduce_range=False, weights="QUInt8"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = from_onnx(path)
    r = compare_onnx(net, path, probes(net))
    assert r["mismatching_logits"] == 0, r


@pytest.mark.parametrize("fmt,act", [("QDQ", "QUInt8"), ("QDQ", "QInt8"), ("QOperator", "QUInt8")])
def test_full_range_weights_warn_about_pair_saturation(tmp_path: Path, fmt: str, act: str) -> None:
    # u8 × s8 kernels on AVX2 without VNNI saturate pair sums at int16; QDQ graphs' int8
    # activations are turned into uint8 by onnxruntime before fusing, so they are affected too
    path = quantized(tmp_path, Cnn, fmt, False, act, reduce_range=False)
    with pytest.warns(InexactExportWarning, match="saturating int16"):
        net = from_onnx(path)
    assert net.meta["onnxruntime"]["pair_saturation"]


def test_qoperator_int8_full_range_is_not_flagged(tmp_path: Path) -> None:
    # QOperator int8 × int8 kernels are exact on AVX2 (measured): no warning
    path = quantized(tmp_path, Cnn, "QOperator", True, "QInt8", reduce_range=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = from_onnx(path)
    assert net.meta["onnxruntime"]["pair_saturation"] == []
    r = compare_onnx(net, path, probes(net))
    assert r["mismatching_logits"] == 0, r


class Sig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(torch.flatten(x, 1)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(36, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.c(x)) + x, 1))


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_unsupported_operators_are_refused_by_name(tmp_path: Path, fmt: str) -> None:
    path = quantized(tmp_path, Sig, fmt, False, "QUInt8")
    with pytest.raises(ModelFileError, match="Sigmoid"):
        from_onnx(path)
    path = quantized(tmp_path, Residual, fmt, False, "QUInt8", seed=1)
    with pytest.raises(ModelFileError, match="residual|Add"):
        from_onnx(path)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 2, 2, padding=1)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():  # classes 0 and 1 split the inputs by the sign of w·h
            self.fc.weight[1] = -self.fc.weight[0]
            self.fc.weight[2] = 0.5 * self.fc.weight[0]
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c(x)), 2, 1)
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("method", ["bab", "linear-bab"])
def test_bab_agrees_with_enumeration(tmp_path: Path, method: str) -> None:
    from qcert.verify.query import verify_query
    from qcert.verify.spec import OutputSpec

    path = quantized(tmp_path, Tiny, "QOperator", True, "QUInt8", shape=(1, 2, 2), seed=0)
    net = from_onnx(path)
    assert any(isinstance(m, QMaxPool2d) for m in net.layers)
    g = torch.Generator().manual_seed(0)
    decided = {"safe": 0, "unsafe": 0}
    for _ in range(200):
        if min(decided.values()) >= 3:
            break
        x0 = torch.randint(0, 256, (1, 1, 2, 2), generator=g)
        if decided["unsafe"] < 3:  # half the time, start next to a class change on a segment
            x1 = torch.randint(0, 256, (1, 1, 2, 2), generator=g)
            t = torch.linspace(0, 1, 257).view(-1, 1, 1, 1)
            seg = (x0 + t * (x1 - x0)).round().to(torch.int64)
            pred = net.predict(seg)
            change = (pred[1:] != pred[:-1]).nonzero()
            if len(change):
                x0 = seg[int(change[0]) : int(change[0]) + 1]
        label = int(net.predict(x0)[0])
        eps = int(torch.randint(1, 7, (1,), generator=g))
        lo, hi = (x0 - eps).clamp(0, 255), (x0 + eps).clamp(0, 255)
        axes = [torch.arange(int(a), int(b) + 1) for a, b in zip(lo.view(-1), hi.view(-1))]
        pts = torch.cartesian_prod(*axes).view(-1, 1, 2, 2)
        robust = bool((net.predict(pts) == label).all())
        if decided["safe" if robust else "unsafe"] >= 3:
            continue
        spec = OutputSpec.robustness(label, net.num_classes)
        r = verify_query(net, lo, hi, spec, method=method, timeout=60)
        assert r.outcome.status == ("safe" if robust else "unsafe")
        assert r.decided_by == "bab"
        decided[r.outcome.status] += 1
    assert min(decided.values()) >= 3, decided  # both answers were exercised


def test_milp_refuses_deployed_layers(tmp_path: Path) -> None:
    from qcert.errors import InputError
    from qcert.verify.query import verify_query
    from qcert.verify.spec import OutputSpec

    net = from_onnx(quantized(tmp_path, Tiny, "QOperator", True, "QUInt8", shape=(1, 2, 2)))
    x0 = torch.full((1, 1, 2, 2), 100)
    with pytest.raises(InputError, match="--method bab"):
        verify_query(net, x0, x0 + 1, OutputSpec.robustness(0, net.num_classes), method="milp")


def test_dataset_pixels_are_fed_only_when_they_are_the_codes(tmp_path: Path) -> None:
    from qcert.cli.common import load_dataset_for
    from qcert.errors import InputError

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(x, 1))

    # int8 activations: the codes of x/255 are about pixel − 128, not the pixels
    net = from_onnx(quantized(tmp_path, Mlp, "QDQ", False, "QInt8", shape=(1, 8, 8)))
    assert net.meta["onnxruntime"]["pixels_are_codes"] is False
    with pytest.raises(InputError, match="quantize_linear"):
        load_dataset_for(net, "digits", "test", None, 10)


def _handmade(tmp: Path, bias: int, relu_zp: int | None) -> Path:
    """float input → QuantizeLinear → DequantizeLinear → Gemm (int8 weights 1, int32 bias) →
    [Relu] → QuantizeLinear → DequantizeLinear → output; 4 inputs, 2 outputs."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    zp = 0 if relu_zp is None else relu_zp
    inits = [
        nh.from_array(np.array(0.01, np.float32), "s_in"),
        nh.from_array(np.array(0, np.uint8), "z_in"),
        nh.from_array(np.ones((2, 4), np.int8), "w"),
        nh.from_array(np.array([0.5, 0.25], np.float32), "s_w"),
        nh.from_array(np.zeros(2, np.int8), "z_w"),
        nh.from_array(np.array([bias, -3], np.int32), "b"),
        nh.from_array(np.array([0.005, 0.0025], np.float32), "s_b"),
        nh.from_array(np.zeros(2, np.int32), "z_b"),
        nh.from_array(np.array(0.3, np.float32), "s_out"),
        nh.from_array(np.array(zp, np.uint8), "z_out"),
    ]
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
        h.make_node("DequantizeLinear", ["w", "s_w", "z_w"], ["wd"], axis=0),
        h.make_node("DequantizeLinear", ["b", "s_b", "z_b"], ["bd"], axis=0),
        h.make_node("Gemm", ["xd", "wd", "bd"], ["g"], transB=1),
    ]
    last = "g"
    if relu_zp is not None:
        nodes.append(h.make_node("Relu", ["g"], ["r"]))
        last = "r"
    nodes += [
        h.make_node("QuantizeLinear", [last, "s_out", "z_out"], ["yq"]),
        h.make_node("DequantizeLinear", ["yq", "s_out", "z_out"], ["y"]),
    ]
    g = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 4])],
        [h.make_tensor_value_info("y", T.FLOAT, ["n", 2])], inits,
    )  # fmt: skip
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    path = tmp / f"hand_{bias}_{relu_zp}.onnx"
    onnx.save(m, path)
    return path


def test_int32_accumulator_overflow_is_refused(tmp_path: Path) -> None:
    from qcert.errors import FormatError

    path = _handmade(tmp_path, 2**31 - 1000, None)  # + up to 4·255: beyond int32
    with pytest.raises(FormatError, match="int32"):
        from_onnx(path)
    with pytest.warns(InexactExportWarning, match="int32"):
        from_onnx(path, strict=False)
    net = from_onnx(_handmade(tmp_path, 2**31 - 1021, None))  # 2**31 - 1021 + 1020 fits
    assert net.layers[-1].kind == "rescale"


def test_removable_relu(tmp_path: Path) -> None:
    path = _handmade(tmp_path, 7, 0)  # zero point 0 = the uint8 minimum: the Relu is the clamp
    net = from_onnx(path)
    assert [m.kind for m in net.layers] == ["linear", "rescale"]
    r = compare_onnx(net, path, probes(net))
    assert r["mismatching_logits"] == 0, r
    with pytest.raises(ModelFileError, match="Relu"):
        from_onnx(_handmade(tmp_path, 7, 5))  # a zero point above the minimum: not removable


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qcert.cli.main import main
    from qcert.quant import load_model

    exact = quantized(tmp_path, Cnn, "QDQ", True, "QUInt8")
    out = tmp_path / "m.qnn"
    assert main(["import", str(exact), "--out", str(out), "--check", "64"]) == 0
    assert "64 equal logit rows" in capsys.readouterr().out
    assert load_model(out).meta["onnxruntime"]["input"]["type"] == "uint8"
    full = quantized(tmp_path, Cnn, "QDQ", True, "QUInt8", reduce_range=False)
    rc = main(["import", str(full), "--out", str(tmp_path / "f.qnn"), "--check", "64"])
    err = capsys.readouterr().err
    assert "saturating int16" in err
    if pair_saturation_cpu():  # onnxruntime differs here, and says why
        assert rc == 1 and "pair saturation" in err
