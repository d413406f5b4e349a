"""The hand-written model script in docs/model-format.md runs, and its file loads and evaluates."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import torch

from qcert import load_model
from qcert.cli.main import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "model-format.md"


def handwritten_script() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- qcert:handwritten-model -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/model-format.md lost its hand-written model script"
    return m.group(1)


def test_handwritten_model_from_docs(tmp_path, monkeypatch, capsys) -> None:
    script = tmp_path / "write_model.py"
    script.write_text(handwritten_script())
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    net = load_model(tmp_path / "handwritten.qnn")
    assert net.classes == ["dark", "bright"] and net.meta == {"author": "by hand"}
    black = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    white = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert net.integer_forward(black).tolist() == [[3200, -3200]]
    assert net.integer_forward(white).tolist() == [[-11200, 11200]]
    assert [net.classes[i] for i in net.predict(torch.cat([black, white])).tolist()] == [
        "dark",
        "bright",
    ]
    assert main(["info", "handwritten.qnn", "--json"]) == 0
    assert '"parameters": 21' in capsys.readouterr().out
