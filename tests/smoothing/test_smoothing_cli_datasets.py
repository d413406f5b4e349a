"""``qcert smooth certify`` on user files: CIFAR-10 batches and an image folder written here, in the
layout of docs/smoothing.md's recipe (every 20th test image, α = 0.001)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from qcert import FixedPointFormat, QNetwork, save_model
from qcert.cli.main import main
from qcert.quant import QConv2d, QFlatten, QLinear, QRequant


def _net(classes: int) -> QNetwork:
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-20, 21, (4, 3, 4, 4), generator=g)
    lin = torch.randint(-20, 21, (classes, 4 * 8 * 8), generator=g)
    return QNetwork(
        [QConv2d.from_int(w, None, FixedPointFormat(8, True, 7), None, 4, 0),
         QRequant(FixedPointFormat(8, False, 8), "half_up"), QFlatten(),
         QLinear.from_int(lin, None, FixedPointFormat(8, True, 7), None)],
        (3, 32, 32), FixedPointFormat(8, False, 8),
    )  # fmt: skip


def _certify(tmp_path: Path, model: Path, dataset: str, root: Path, capsys) -> dict:
    out = tmp_path / f"{dataset}.tsv"
    argv = ["smooth", "certify", str(model), "--dataset", dataset, "--data-root", str(root)]
    argv += ["--split", "test", "--sigma", "0.12", "--skip", "20", "--n", "200", "--n0", "20"]
    argv += ["--alpha", "0.001", "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert json.loads(out.with_suffix(".tsv.json").read_text())["n"] == summary["n"]
    return summary


def test_certify_cifar10_files(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {
        b"data": rng.integers(0, 256, size=(45, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=45)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    model = tmp_path / "m.qnn"
    save_model(_net(10), model)
    summary = _certify(tmp_path, model, "cifar10", tmp_path, capsys)
    assert summary["n"] == 3 and summary["sigma"] == 0.12  # images 0, 20, 40
    assert set(summary["certified_acc"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}


def test_certify_image_folder(tmp_path: Path, capsys) -> None:
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for cls in ("accordion", "airplanes", "anchor"):
            for i in range(7):
                path = tmp_path / "caltech" / split / cls / f"image_{i:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                size = (40, 30) if i % 2 else (30, 50)  # resized and center-cropped to 32×32
                image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    model = tmp_path / "m.qnn"
    save_model(_net(3), model)
    summary = _certify(tmp_path, model, "image-folder", tmp_path / "caltech", capsys)
    assert summary["n"] == 2  # 21 test images: 0 and 20
