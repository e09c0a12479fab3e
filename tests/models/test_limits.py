"""Resource limits on what is parsed (YAML configs, checkpoint pickles), bad config values, non-regular
inputs, and --trust-checkpoint only from the command line. Every refusal is one line, fast, no hang."""

from __future__ import annotations

import os
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner, Result

from exporter.cli.main import cli
from exporter.errors import CheckpointError, ConfigError, InputError, ModelError
from exporter.io import load_yaml, regular_file
from exporter.models import build_model, load_model
from exporter.models import checkpoint as ckpt_file
from exporter.models import safe_pickle as ckpt_mod
from exporter.models.checkpoint import safe_load
from exporter.models.safe_pickle import check_object_graph
from exporter.models.zoo import builtin_path, configs_dir, read_config

YOLOV5N = configs_dir() / "yolov5n.yaml"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def one_line(r: Result, *needles: str, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yexport: error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def laughs_yaml(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nnc: 80\nbackbone: *a{levels}\nhead: []\nanchors: [[10,13]]\n"


def billion_laughs() -> list:
    a: list = ["lol"] * 10
    for _ in range(9):
        a = [a] * 10
    return a


# ------------------------------------------------------------------------------------------- YAML


def test_billion_laughs_yaml_is_refused_fast(tmp_path: Path) -> None:
    p = tmp_path / "laughs.yaml"
    p.write_text(laughs_yaml())
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        read_config(p)
    assert time.perf_counter() - t < 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(laughs_yaml().replace("nc: 80", "providers: cpu"))
    one_line(run("export", "--config", str(cfg), "yolov5n"), "expands to more than")


def test_recursive_and_deep_yaml_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "rec.yaml"
    p.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="refers to the collection that contains it"):
        load_yaml(p)
    p.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests deeper"):
        load_yaml(p)


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    p = tmp_path / "ok.yaml"
    p.write_text("base: &b {keep-bn: true}\nother: *b\n")
    assert load_yaml(p) == {"base": {"keep-bn": True}, "other": {"keep-bn": True}}


def test_oversized_yaml_is_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    with p.open("wb") as f:
        f.truncate(2 << 20)  # sparse: 2 MiB of nothing
    with pytest.raises(InputError, match="too large"):
        read_config(p)


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("nc", '"abc"', "'nc'"), ("nc", "0", "'nc'"), ("nc", "-1", "'nc'"), ("nc", "true", "'nc'"),
    ("nc", "1.5", "'nc'"), ("nc", "100000000", "'nc'"), ("backbone", "5", "'backbone'"),
    ("head", '"x"', "'head'"), ("depth_multiple", "-0.33", "'depth_multiple'"),
    ("width_multiple", "0", "'width_multiple'"), ("width_multiple", ".nan", "'width_multiple'"),
    ("depth_multiple", "1e9", "'depth_multiple'"), ("anchors", "[[10, -13]]", "'anchors'"),
    ("anchors", "[[10, 13], [1, 2, 3, 4]]", "'anchors'"),
])
def test_bad_config_values_are_one_line_model_errors(tmp_path: Path, key: str, value: str, needle: str) -> None:
    cfg = yaml.safe_load(YOLOV5N.read_text())
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != key}) + f"{key}: {value}\n"
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ModelError, match=needle) as info:
        build_model(p)
    assert "\n" not in str(info.value)
    one_line(run("info", str(p)), needle)


@pytest.mark.parametrize(("row", "needle"), [
    ([-1, 1, "Conv", [10**7, 3, 2]], "output channels"),
    ([-1, 1, "Conv", [0, 3, 2]], "positive integer"),
    ([-1, 1000, "C3", [64]], "repeats"),
    ([-1, 1, "Conv", [1024, 400, 1]], "parameters"),
    ([-1, 1, "nn.Upsample", [None, 10**6, "nearest"]], "scale factor"),
])
def test_configs_that_would_allocate_too_much_are_refused_first(tmp_path: Path, row: list, needle: str) -> None:
    cfg = yaml.safe_load(YOLOV5N.read_text())
    cfg["backbone"].insert(1, row)
    p = tmp_path / "huge.yaml"
    p.write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    with pytest.raises(ModelError, match=needle):
        build_model(p)
    assert time.perf_counter() - t < 5


def test_a_crafted_row_is_not_printed_in_full(tmp_path: Path) -> None:
    cfg = yaml.safe_load(YOLOV5N.read_text())
    cfg["backbone"][0] = ["x" * 10_000]
    p = tmp_path / "long.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelError) as info:
        build_model(p)
    assert len(str(info.value)) < 400


# ---------------------------------------------------------------------------------- model sources


def test_builtin_names_are_bare_names_only(tmp_path: Path) -> None:
    assert builtin_path("yolov5n") == YOLOV5N
    for name in (str(configs_dir() / "yolov5n"), "/abs/yolov5n", "../models/yolov5n", "./yolov5n", ""):
        assert builtin_path(name) is None
    one_line(run("info", str(configs_dir() / "yolov5n")), "no such file or built-in model")


def test_fifo_and_devices_are_refused_without_opening(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(InputError, match="not a regular file"):
            load_model(path)
    yfifo = tmp_path / "c.yaml"
    os.mkfifo(yfifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_config(yfifo)
    one_line(run("info", str(yfifo)), "not a regular file")
    one_line(run("export", "--config", str(yfifo)), "not a regular file")


def test_permission_denied_is_said_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "model.pt"
    p.write_bytes(b"PK\x03\x04 not really")
    real_open = os.open

    def denied(path, flags, *args, **kwargs):  # root reads anything: simulate an unreadable file
        if Path(path) == p:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("exporter.io.os.open", denied)
    with pytest.raises(InputError, match="permission denied") as info:
        load_model(p)
    assert "not a PyTorch checkpoint" not in str(info.value)
    with pytest.raises(InputError, match="permission denied"):
        safe_load(p)
    with pytest.raises(InputError, match="permission denied"):
        regular_file(p)


# --------------------------------------------------------------------------------------- pickles


def test_billion_laughs_pickle_of_plain_data_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "laughs.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": billion_laughs()}, p)
    assert p.stat().st_size < 100_000
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match="billion laughs"):
        load_model(p)
    assert time.perf_counter() - t < 5
    one_line(run("info", str(p)), "billion laughs")


def test_billion_laughs_inside_a_pickled_model_is_refused(tmp_path: Path, yolov5_official) -> None:
    from exporter.models.common import Conv

    p = tmp_path / "laughs-model.pt"
    with yolov5_official.package() as mapping:
        m = mapping[Conv](3, 8)
        m.laughs = billion_laughs()
        torch.save({"model": m}, p)
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match="billion laughs"):
        safe_load(p)
    assert time.perf_counter() - t < 5


def test_pickle_bounds_opcodes_depth_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "legacy.pt"
    with p.open("wb") as f:  # a legacy (non-zip) pickle: read only by the bounded unpickler
        pickle.dump(list(range(5000)), f, protocol=2)
    monkeypatch.setattr(ckpt_mod, "MAX_PICKLE_OPS", 1000)
    with pytest.raises(CheckpointError, match="opcodes"):
        safe_load(p)
    monkeypatch.undo()
    deep: list = []
    for _ in range(500):
        deep = [deep]
    with pytest.raises(ckpt_mod.PickleLimit, match="nest deeper"):
        check_object_graph(deep)
    cyc: list = []
    cyc.append(cyc)
    with pytest.raises(ckpt_mod.PickleLimit, match="cyclic"):
        check_object_graph(cyc)
    # a data.pkl over the bound is refused from the zip directory, before it is read
    big = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(1)}, big)
    monkeypatch.setattr(ckpt_file, "MAX_PICKLE_BYTES", 10)
    with pytest.raises(CheckpointError, match="data.pkl is"):
        safe_load(big)


def test_nested_marks_in_a_pickle_are_bounded(tmp_path: Path) -> None:
    p = tmp_path / "marks.pt"
    p.write_bytes(b"\x80\x02" + b"(" * 10_000 + b"t" * 10_000 + b".")
    with pytest.raises(CheckpointError, match="nests deeper"):
        safe_load(p)


def test_a_storage_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    """A legacy-format pickle declaring a 4 TB storage: refused before torch allocates it."""

    data = pickle.dumps(("storage", None, "0", "cpu", 10**12), protocol=2)
    body = b"\x80\x02" + data[2:-1] + b"Q."  # the tuple, then BINPERSID
    p = tmp_path / "storage.pt"
    p.write_bytes(body)
    with pytest.raises(CheckpointError, match="declares"):
        safe_load(p)


def test_real_checkpoints_are_well_inside_the_bounds(tmp_path: Path, yolov5_official) -> None:
    p = yolov5_official.write(build_model("yolov5n", seed=0), tmp_path / "n.pt", ema=build_model("yolov5n", seed=1))
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    assert info.file_size < ckpt_file.MAX_PICKLE_BYTES / 20  # yolov5x with its EMA: 0.4 MB
    obj = safe_load(p)
    assert check_object_graph(obj) < ckpt_mod.MAX_PICKLE_EXPANDED / 50


# ------------------------------------------------------------------------------ --trust-checkpoint


@pytest.mark.parametrize("var", ["YEXPORT_INFO_TRUST_CHECKPOINT", "YEXPORT_EXPORT_TRUST_CHECKPOINT"])
def test_trust_from_the_environment_is_refused(var: str) -> None:
    cmd = var.split("_")[1].lower()
    one_line(run(cmd, "yolov5n", env={var: "1"}), var, "only turned on by typing --trust-checkpoint")


def test_trust_env_var_is_not_read_by_click() -> None:
    from exporter.cli.info import info

    opt = next(p for p in info.params if p.name == "trust_checkpoint")
    assert opt.allow_from_autoenv is False and not opt.envvar


def test_trust_in_a_config_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    for key in ("trust-checkpoint", "trust_checkpoint"):
        cfg.write_text(f"{key}: true\n")
        one_line(run("export", "--config", str(cfg), "yolov5n"), "cannot be set in a config file")


def test_a_yaml_list_for_a_comma_list_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.cli import _options

    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: [cpu, cuda]\nvariants: [fused, keep-bn]\n")
    seen = {}

    def stop(*args, **kwargs):
        seen["args"] = args
        raise ConfigError("stop here")

    monkeypatch.setattr(_options, "preflight_export", stop)
    monkeypatch.setattr("exporter.cli.export.preflight_export", stop)
    r = run("export", "--config", str(cfg), "yolov5n", "--no-check")
    one_line(r, "stop here")  # the options were accepted: cuda as a provider, two variants
    assert seen["args"][3] == ["fused", "keep-bn"]
