"""The example in docs/export.md runs and does what it says."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

from qcert.export import from_onnx

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def test_export_example_from_docs(tmp_path, monkeypatch) -> None:
    m = re.search(r"<!-- qcert:export-example -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/export.md lost its example"
    script = tmp_path / "example.py"
    script.write_text(m.group(1))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")  # its asserts check onnxruntime == reference
    assert [layer.kind for layer in from_onnx(tmp_path / "tiny.onnx").layers] == [
        "linear",
        "requant",
        "linear",
    ]
