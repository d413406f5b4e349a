"""Conversion of float nn.Sequential models to QNetworks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcert import from_float
from qcert.errors import FormatError
from qcert.quant import QAvgPool2d, QConv2d, QLinear, QRequant
from qcert.quant.convert import frac_for


def test_frac_for_uses_the_range() -> None:
    assert frac_for(1.0, 8, True) == 6  # 64 fits 127, 128 does not
    assert frac_for(0.99, 8, True) == 7  # round(0.99*128) = 127
    assert frac_for(255.0, 8, False) == 0
    assert frac_for(3.0, 2, False) == 0
    for m in [0.001, 0.3, 7.7, 1000.0]:
        f = frac_for(m, 8, True)
        assert round(m * 2.0**f) <= 127 < round(m * 2.0 ** (f + 1))


def test_mlp_and_cnn_convert_close_to_float() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (128, 1, 12, 12), dtype=torch.uint8)
    for model in [
        nn.Sequential(nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 10)),
        nn.Sequential(
            nn.Conv2d(1, 8, 3, 1, 1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 8, 3, 2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 2 * 2, 10),
        ),
    ]:
        model.eval()
        q = from_float(model, x)
        ref = model(x.float() / 255)
        got = q.integer_forward(x).double() * 2.0**-q.logit_frac
        assert (got - ref.double()).abs().max() < 0.05 * ref.abs().max()
        assert (q.predict(x) == ref.argmax(1)).float().mean() > 0.8


def test_structure_bits_and_bn_folding() -> None:
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(16)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Linear(6, 16), bn, nn.ReLU(), nn.Linear(16, 8), nn.Linear(8, 3)).eval()
    x = torch.randint(0, 256, (64, 6))
    q = from_float(model, x, weight_bits=[4, 6, 8], act_bits=[5, 7])
    kinds = [type(m) for m in q.layers]
    assert kinds == [QLinear, QRequant, QLinear, QRequant, QLinear]
    assert [m.weight_format.bits for m in q.affine_layers()] == [4, 6, 8]
    assert not q.layers[1].format.signed and q.layers[3].format.signed  # ReLU vs plain requant
    assert [q.layers[1].format.bits, q.layers[3].format.bits] == [5, 7]
    q8 = from_float(model, x, bits=12)
    ref = model(x.float() / 255).double()
    got = q8.integer_forward(x).double() * 2.0**-q8.logit_frac
    assert (got - ref).abs().max() < 0.02 * ref.abs().max()


@pytest.mark.parametrize(
    "layer, message",
    [
        (nn.Sigmoid(), "Sigmoid"),
        (nn.MaxPool2d(2), "MaxPool2d"),
        (nn.AvgPool2d(3), "not a power of two"),
        (nn.Conv2d(2, 2, 3, dilation=2), "dilation"),
    ],
)
def test_unsupported_layers_are_named(layer, message) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), layer, nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    x = torch.randint(0, 256, (4, 1, 8, 8))
    with pytest.raises(FormatError, match=message):
        from_float(model, x)


def test_avgpool_and_input_scale_fold() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)
    )
    x = torch.randint(0, 256, (16, 1, 7, 7))
    q = from_float(model.eval(), x, input_scale=1.0)  # float model fed raw pixel levels
    assert any(isinstance(m, QAvgPool2d) for m in q.layers) and isinstance(q.layers[0], QConv2d)
    ref = model(x.float()).double()
    got = q.integer_forward(x).double() * 2.0**-q.logit_frac
    assert (got - ref).abs().max() < 0.05 * ref.abs().max() + 1e-6
