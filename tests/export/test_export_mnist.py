"""MNIST: an 8-bit CNN converted with ``from_float``; onnxruntime's logits equal the reference
executor's on the whole MNIST test set (integer flavour), and on a subset for the QDQ flavour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcert.data import load
from qcert.export import compare_onnx, from_onnx, onnx_model, qdq_problems, to_onnx
from qcert.quant import QNetwork, from_float


def mnist_cnn(rounding: str = "half_up", weight_bits: int = 8) -> QNetwork:
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    calib, _ = load("mnist", "train", n=1000)
    return from_float(f, calib, bits=8, weight_bits=weight_bits, rounding=rounding)


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load("mnist", "test")
    return images, labels


def test_integer_export_equals_reference_on_the_whole_mnist_test_set(test_set, tmp_path) -> None:
    images, _ = test_set
    assert images.shape == (10000, 1, 28, 28)
    net = mnist_cnn()
    path = tmp_path / "cnn.onnx"
    model = to_onnx(net, path)
    assert {"ConvInteger", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    r = compare_onnx(net, path, images)
    assert r["equal_logits"] == r["n"] == 10000
    assert r["max_abs_diff"] == 0
    back = from_onnx(path)
    x = images[:500]
    assert torch.equal(back.integer_forward(x), net.integer_forward(x))


def test_qdq_export_equals_reference_on_mnist(test_set) -> None:
    images, _ = test_set
    net = mnist_cnn("half_even", weight_bits=7)
    assert not qdq_problems(net, fused_kernels=True)
    model = onnx_model(net, "qdq")
    for level in ("basic", "all"):
        r = compare_onnx(net, model, images[:1000], optimization=level)
        assert r["equal_logits"] == r["n"] == 1000


@pytest.mark.slow
def test_int64_only_and_qdq_on_the_whole_mnist_test_set(test_set) -> None:
    images, _ = test_set
    net = mnist_cnn()
    r = compare_onnx(net, onnx_model(net, int8_kernels=False), images)
    assert r["equal_logits"] == 10000
    qnet = mnist_cnn("half_even", weight_bits=7)
    model = onnx_model(qnet, "qdq")
    for level in ("basic", "all"):
        r = compare_onnx(qnet, model, images, optimization=level)
        assert r["equal_logits"] == 10000
