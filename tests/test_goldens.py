"""`make graphs-check` as part of the suite: fresh exports must match the golden snapshots."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _goldens():
    spec = importlib.util.spec_from_file_location("goldens", FIXTURES / "golden" / "goldens.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_exports_match_golden_snapshots(capsys: pytest.CaptureFixture[str]) -> None:
    goldens = _goldens()
    code = goldens.check()
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("ok ") == len(goldens.MODELS) * len(goldens.VARIANTS)


def test_golden_files_cover_every_variant() -> None:
    goldens = _goldens()
    for model in goldens.MODELS:
        for variant in goldens.VARIANTS:
            text = (FIXTURES / "golden" / f"{model}-{variant}.graph.txt").read_text()
            assert text.startswith("# yexport graph snapshot")
            assert f'"yexport.model": "{model}"' in text
