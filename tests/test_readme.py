"""The README's library snippet runs as pasted (in a fresh folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Library\n\n```python\n(.*?)```", text, re.S)
    assert block, "README has no ## Library python block"
    return block.group(1)


@pytest.mark.slow
def test_readme_library_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippet(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "=> PASS" in out and "BatchNormalization" in out
    assert (tmp_path / "exports" / "yolov5s-fused.onnx").exists()
