"""Fixtures for graph inspection, snapshot and diff: small ONNX graphs built in code (onnx.helper) and
a Conv+BN+SiLU stack exported by torch once with BatchNorm folded and once with it kept."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def build_chain(
    *,
    size: int | str = 16,
    batch: int | str = 1,
    channels: tuple[int, ...] = (8, 16),
    seed: int = 0,
    opset: int = 17,
    metadata: dict[str, str] | None = None,
    names: str = "",
) -> onnx.ModelProto:
    """x -> [Conv -> Relu] per width -> Add(skip) -> GlobalAveragePool -> Flatten -> Gemm -> MatMul -> y.

    ``names`` prefixes every node and internal value name (to build renamed twins)."""
    rng = np.random.default_rng(seed)
    p = names
    nodes, inits = [], []
    c_in, prev = 3, "images"
    for k, c in enumerate(channels):
        w, b = f"{p}w{k}", f"{p}b{k}"
        inits.append(numpy_helper.from_array(rng.standard_normal((c, c_in, 3, 3)).astype(np.float32), w))
        inits.append(numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), b))
        nodes.append(helper.make_node("Conv", [prev, w, b], [f"{p}conv{k}"], name=f"{p}Conv_{k}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
        nodes.append(helper.make_node("Relu", [f"{p}conv{k}"], [f"{p}relu{k}"], name=f"{p}Relu_{k}"))
        prev, c_in = f"{p}relu{k}", c
    nodes.append(helper.make_node("Add", [prev, prev], [f"{p}sum"], name=f"{p}Add"))
    nodes.append(helper.make_node("GlobalAveragePool", [f"{p}sum"], [f"{p}gap"], name=f"{p}Gap"))
    nodes.append(helper.make_node("Flatten", [f"{p}gap"], [f"{p}flat"], name=f"{p}Flatten", axis=1))
    inits.append(numpy_helper.from_array(rng.standard_normal((10, c_in)).astype(np.float32), f"{p}fc_w"))
    inits.append(numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), f"{p}fc_b"))
    nodes.append(helper.make_node("Gemm", [f"{p}flat", f"{p}fc_w", f"{p}fc_b"], [f"{p}fc"], name=f"{p}Gemm", transB=1))
    inits.append(numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), f"{p}proj"))
    nodes.append(helper.make_node("MatMul", [f"{p}fc", f"{p}proj"], ["logits"], name=f"{p}MatMul"))
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model


def rename_all(model: onnx.ModelProto, prefix: str = "renamed_", io: bool = False) -> onnx.ModelProto:
    """A copy with every node and internal value renamed (graph inputs/outputs too when ``io``)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = set() if io else {v.name for v in g.input} | {v.name for v in g.output}
    init_names = {t.name for t in g.initializer}
    keep -= init_names
    mapping: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.setdefault(name, f"{prefix}{len(mapping)}")

    for t in g.initializer:
        t.name = new(t.name)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = new(vi.name)
    for k, n in enumerate(g.node):
        n.name = f"{prefix}node{k}"
        for i, x in enumerate(n.input):
            n.input[i] = new(x)
        for i, x in enumerate(n.output):
            n.output[i] = new(x)
    return m


def strip_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Identity nodes that only forward an initializer (what the TorchScript exporter leaves in
    front of BatchNorm statistics and deduplicated biases), rewiring their consumers."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    alias: dict[str, str] = {}
    keep = []
    for n in g.node:
        src = alias.get(n.input[0], n.input[0]) if n.input else ""
        if n.op_type == "Identity" and src in inits and n.output[0] not in {o.name for o in g.output}:
            alias[n.output[0]] = src
            continue
        keep.append(n)
    for n in keep:
        for i, x in enumerate(n.input):
            n.input[i] = alias.get(x, x)
    del g.node[:]
    g.node.extend(keep)
    return model


def export_conv_bn_stack(out: Path, *, keep_bn: bool, seed: int = 0) -> Path:
    """Export a Conv2d+BatchNorm2d+SiLU stack (3 layers, then two 1x1 heads) with the TorchScript
    exporter: ``training=EVAL`` folds BN into the convs, ``PRESERVE`` on an eval model keeps it."""
    import torch
    from torch import nn

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, c = [], 3
            for o in (8, 16, 16):
                layers.append(nn.Sequential(nn.Conv2d(c, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.SiLU()))
                c = o
            self.body = nn.Sequential(*layers)
            self.head_a = nn.Conv2d(16, 8, 1)
            self.head_b = nn.Conv2d(16, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.body(x)
            return torch.cat([self.head_a(x), torch.sigmoid(self.head_b(x))], 1)

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Stack()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # real statistics, so folding changes the conv weights
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    model.eval()
    mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(out), dynamo=False, training=mode,
                          opset_version=17, input_names=["images"], output_names=["output0"])
    onnx.save(strip_identity(onnx.load(str(out))), str(out))
    return out


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graph")


@pytest.fixture(scope="session")
def chain_path(graph_dir: Path) -> Path:
    p = graph_dir / "chain.onnx"
    onnx.save(build_chain(metadata={"stride": "32", "author": "tests"}), str(p))
    return p


@pytest.fixture(scope="session")
def torch_pair(graph_dir: Path) -> dict[str, Path]:
    """The same Conv+BN+SiLU stack exported twice with BN folded (fused, fused_again) and once kept."""
    pytest.importorskip("torch")
    return {
        "fused": export_conv_bn_stack(graph_dir / "fused.onnx", keep_bn=False),
        "fused_again": export_conv_bn_stack(graph_dir / "fused_again.onnx", keep_bn=False),
        "keep_bn": export_conv_bn_stack(graph_dir / "keep_bn.onnx", keep_bn=True),
    }


@pytest.fixture
def save(tmp_path: Path) -> Callable[[Any, str], Path]:
    def _save(model: onnx.ModelProto, name: str) -> Path:
        p = tmp_path / name
        onnx.save(model, str(p))
        return p

    return _save


@pytest.fixture
def builders() -> Any:
    """The model builders and rewriters above, for tests to call."""

    class B:
        chain = staticmethod(build_chain)
        rename = staticmethod(rename_all)
        strip_identity = staticmethod(strip_identity)

    return B
