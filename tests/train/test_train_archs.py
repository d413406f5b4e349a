"""Architectures by name: shapes, the QA-IBP formats, bit widths, float twins."""

from __future__ import annotations

import pytest
import torch

from qcert.errors import ConfigError
from qcert.quant import QConv2d, QLinear, QRequant, from_float
from qcert.quant.floatmodel import ARCHS, build_float
from qcert.train.archs import build_qnetwork, layer_bits


@pytest.mark.parametrize("arch", ["mlp-small", "cnn-small", "cnn-medium"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_small_archs_build_for_digits_and_mnist(arch: str, shape: tuple[int, ...]) -> None:
    net = build_qnetwork(arch, shape, 10, seed=1)
    assert net.num_classes == 10 and net.input_shape == shape
    assert net.exact_in(torch.float64)
    x = torch.randint(0, 256, (3, *shape))
    z = net.integer_forward(x)
    assert torch.equal(net(x.double()) * 2.0**net.logit_frac, z.double())
    model = build_float(arch, shape, 10, seed=1)
    assert model(x.float() / 256).shape == (3, 10)


def test_qaibp_formats_and_layer_layout() -> None:
    net = build_qnetwork("cnn-small", (1, 28, 28), 10)
    affine = net.affine_layers()
    assert len(affine) == ARCHS["cnn-small"].num_affine == 4
    for m in affine:
        assert (m.weight_format.bits, m.weight_format.signed, m.weight_format.frac) == (8, True, 7)
        assert m.bias_format is not None and m.bias_format.frac == 4 and m.bias_format.signed
        assert m.bias_format.frac <= m.acc_frac
    requants = [m for m in net.layers if isinstance(m, QRequant)]
    assert len(requants) == 3
    for r in requants:
        assert (r.format.bits, r.format.signed, r.format.frac) == (8, False, 5)
        assert r.rounding.value == "half_up"
    assert isinstance(net.layers[-1], QLinear)  # logits are not requantized
    assert (net.input_format.bits, net.input_format.frac) == (8, 8)
    w = torch.cat([m.int_weight().flatten() for m in affine])
    assert int(w.min()) >= -128 and int(w.max()) <= 127


MNIST_CONVS = [(64, 5, 2), (128, 3, 1), (256, 3, 1), (384, 3, 1), (512, 3, 2)]


@pytest.mark.parametrize(
    ("arch", "shape", "convs"),
    [
        ("paper-mnist", (1, 28, 28), MNIST_CONVS),
        ("paper-cifar", (3, 32, 32), [(64, 5, 2), (96, 3, 1), (128, 3, 2)]),
    ],
    ids=["paper-mnist", "paper-cifar"],
)
def test_paper_archs_have_the_papers_layers(arch: str, shape, convs) -> None:
    """Unpadded convolutions as (out channels, kernel, stride), then dense 128 and 10."""
    net = build_qnetwork(arch, shape, 10)
    got = [m for m in net.layers if isinstance(m, QConv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in got] == convs
    assert all(c.padding == (0, 0) for c in got)
    assert [d.out_features for d in net.layers if isinstance(d, QLinear)] == [128, 10]
    build_qnetwork(arch, (1, 28, 28), 10)  # MNIST-sized inputs too (Fashion-MNIST)


def test_bits_per_layer_and_errors() -> None:
    net = build_qnetwork("mlp-small", (1, 8, 8), 10, bits=[6, 4, 8])
    affine = net.affine_layers()
    assert [m.weight_format.bits for m in affine] == [6, 4, 8]
    assert [m.format.bits for m in net.layers if isinstance(m, QRequant)] == [6, 4]
    assert layer_bits(5, 3) == [5, 5, 5]
    with pytest.raises(ConfigError, match="2 bit widths given for 3"):
        layer_bits([8, 8], 3)
    with pytest.raises(ConfigError, match="out of range"):
        layer_bits(17, 3)
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_qnetwork("resnet", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="too small"):
        build_qnetwork("paper-mnist", (1, 8, 8), 10)


def test_float_arch_converts_with_from_float() -> None:
    model = build_float("cnn-small", (1, 8, 8), 10)
    calib = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    net = from_float(model, calib, input_scale=1 / 256)
    x = calib[:5].to(torch.int64)
    assert net.predict(x).shape == (5,)
