"""The user's own model: pkg.module:factory and file.py:factory, weights from a state_dict."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from exporter.errors import CheckpointError, InputError, ModelError
from exporter.models import load_model
from exporter.models.factory import parse_factory

MODULE = textwrap.dedent('''
    from torch import nn

    CALLS = []


    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))


    def build():
        CALLS.append(1)
        return Small()


    def not_a_module():
        return 42


    INSTANCE = Small()
''')


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "usermodel.py"
    path.write_text(MODULE)
    return path


@pytest.mark.parametrize(("text", "parsed"), [
    ("pkg.module:build", ("pkg.module", "build")),
    ("path/to/file.py:build", ("path/to/file.py", "build")),
    ("file.py:Factory.create", ("file.py", "Factory.create")),
    ("yolov5s", None),
    ("model.yaml", None),
    ("my.pt", None),
    ("file.py:", None),
    ("file.py:1bad", None),
])
def test_factory_syntax(text: str, parsed: tuple[str, str] | None) -> None:
    assert parse_factory(text) == parsed


def test_an_existing_file_with_a_colon_is_a_file(tmp_path: Path) -> None:
    odd = tmp_path / "a.py:build"
    odd.write_text("x")
    assert parse_factory(str(odd)) is None


def test_file_factory_is_seeded_and_named(user_file: Path) -> None:
    a = load_model(f"{user_file}:build", seed=3)
    b = load_model(f"{user_file}:build", seed=3)
    c = load_model(f"{user_file}:build", seed=4)
    assert a.kind == "factory" and a.name == "usermodel" and not a.model.training
    assert torch.equal(a.model.conv.weight, b.model.conv.weight)
    assert not torch.equal(a.model.conv.weight, c.model.conv.weight)
    assert a.describe()["class"] == "Small" and len(a.sha256) == 64


def test_the_seed_leaves_the_global_rng_alone(user_file: Path) -> None:
    load_model(f"{user_file}:build", seed=0)  # the module's own import-time code runs once, here
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    load_model(f"{user_file}:build", seed=0)
    assert torch.equal(torch.rand(1), before)


def test_module_factory_imports_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    lm = load_model("userpkg.nets:build")
    assert lm.name == "nets" and isinstance(lm.model, nn.Module)


@pytest.mark.parametrize(("attr", "error", "words"), [
    ("missing", InputError, "has no attribute 'missing'"),
    ("not_a_module", ModelError, "returned a int"),
    ("INSTANCE", ModelError, "module instance"),
])
def test_bad_factories_say_why(user_file: Path, attr: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        load_model(f"{user_file}:{attr}")


def test_missing_file_and_module(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such Python file"):
        load_model(f"{tmp_path}/nope.py:build")
    with pytest.raises(InputError, match="no module named"):
        load_model("surely_not_a_module_xyz:build")


def test_weights_state_dict_strict_by_default(user_file: Path, tmp_path: Path) -> None:
    lm = load_model(f"{user_file}:build", seed=1)
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in lm.model.state_dict().items()}
    torch.save(sd, tmp_path / "w.pt")
    loaded = load_model(f"{user_file}:build", weights=tmp_path / "w.pt")
    assert torch.equal(loaded.model.conv.weight, sd["conv.weight"])
    assert loaded.weights == "state_dict w.pt"
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pt")
    assert torch.equal(load_model(f"{user_file}:build", weights=tmp_path / "wrapped.pt").model.conv.weight,
                       sd["conv.weight"])
    del sd["bn.weight"]
    torch.save(sd, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="does not fit the model.*--no-strict-weights"):
        load_model(f"{user_file}:build", weights=tmp_path / "short.pt")
    lenient = load_model(f"{user_file}:build", weights=tmp_path / "short.pt", strict_weights=False)
    assert "1 missing" in lenient.weights


def test_weights_are_never_unpickled_without_trust(user_file: Path, tmp_path: Path) -> None:
    lm = load_model(f"{user_file}:build")
    torch.save(lm.model, tmp_path / "whole.pt")  # a pickled module object
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(f"{user_file}:build", weights=tmp_path / "whole.pt")
    trusted = load_model(f"{user_file}:build", weights=tmp_path / "whole.pt", trust_checkpoint=True)
    assert torch.equal(trusted.model.conv.weight, lm.model.conv.weight)


def test_weights_only_for_factories(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="only for a factory model"):
        load_model("yolov5n", weights=tmp_path / "w.pt")


def test_importing_raises_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "boom.py"
    bad.write_text("raise ValueError('broken on import')\n")
    with pytest.raises(ModelError, match="importing it raised ValueError: broken on import"):
        load_model(f"{bad}:build")
