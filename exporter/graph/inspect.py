"""What is inside an ONNX file: interface, ops, parameters, FLOPs, metadata. Never reads weights.

Parameter counts and bytes come from initializer dims and dtypes, so a model whose weights live in
external data is inspected without touching them. FLOPs are counted for Conv, ConvTranspose, Gemm
and MatMul from shapes found by ONNX shape inference, 2 per multiply-add (bias adds not counted); a
node whose shapes are not all known numbers is counted as unknown rather than guessed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from math import prod
from pathlib import Path
from typing import Any, TypeGuard

from exporter.graph.dtypes import _DTYPE_BITS, dtype_bytes, dtype_long, numel
from exporter.graph.sources import load_any, no_gc
from exporter.graph.value_types import infer_value_types, shape_list

__all__ = ["WATCHED_OPS", "FLOP_OPS", "inspect", "format_report"]

# ops whose count a reviewer wants to see at a glance (BN kept? shape clutter? layout shuffles?)
WATCHED_OPS = ("BatchNormalization", "Shape", "Gather", "Identity", "Resize", "Reshape", "Transpose")
FLOP_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_UNKNOWN_LISTED = 20


def _value_info(vi: Any) -> dict[str, Any]:
    tp = vi.type
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        dtype = dtype_long(tp.tensor_type.elem_type)
    else:
        dtype = which or "unknown"
    return {"name": vi.name, "dtype": dtype, "shape": shape_list(tp)}


def _known(shape: list | None) -> TypeGuard[list[int]]:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _node_flops(node: Any, shape: Callable[[str], list | None], inputs: list[str] | None = None,
                outputs: list[str] | None = None) -> int | None:
    """FLOPs (2 per multiply-add) of one node, or None when its shapes are not known (``inputs`` and
    ``outputs``: the node's, when the caller has read them already)."""
    op = node.op_type
    node_in = node.input if inputs is None else inputs
    node_out = node.output if outputs is None else outputs
    ins = [shape(x) if x else None for x in node_in[:2]]
    out = shape(node_out[0]) if node_out and node_out[0] else None
    if op == "Conv":
        w = ins[1] if len(ins) > 1 else None
        if not (_known(w) and _known(out) and len(w) >= 2):
            return None
        return 2 * numel(out) * numel(w[1:])
    if op == "ConvTranspose":
        x, w = ins[0], ins[1] if len(ins) > 1 else None
        if not (_known(x) and _known(w) and len(w) >= 2):
            return None
        return 2 * numel(x) * numel(w[1:])
    if op == "Gemm":
        a = ins[0]
        if not (_known(a) and _known(out) and len(a) == 2):
            return None
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return 2 * numel(out) * k
    if op == "MatMul":
        a = ins[0]
        if not (_known(a) and _known(out) and len(a) > 0):
            return None
        return 2 * numel(out) * a[-1]
    return None


def inspect(path_or_model: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """Summary of an ONNX file or ModelProto as one JSON-ready dict (weights are never read)."""
    model, _base_dir, path = load_any(path_or_model)[:3]  # the loader's scan is for canonicalizing: let go
    with no_gc():
        return _inspect(model, path)


def _inspect(model: Any, path: str | None) -> dict[str, Any]:
    g = model.graph
    # one pass per field over the nodes: protobuf field access is what costs on big graphs; inputs
    # are read only for the ops that carry weights or FLOPs
    node_list = list(g.node)
    n_ops = [n.op_type for n in node_list]
    n_dom = [n.domain for n in node_list]
    n_out = [n.output[:] for n in node_list]
    n_in = {k: node_list[k].input[:] for k, op in enumerate(n_ops) if op in _READS_INPUTS}
    init_rows = [(t.name, t.data_type, tuple(t.dims), t.data_location) for t in g.initializer]
    init_meta = {name: (dt, dims) for name, dt, dims, _ in init_rows}
    for st in g.sparse_initializer:
        init_meta.setdefault(st.values.name, (st.values.data_type, tuple(st.dims)))
    types = infer_value_types(model, node_outputs=n_out, inits=init_meta, texts=False)
    infer_error = types.error

    init_names = {t[0] for t in init_rows}
    weights = _weight_names(g, (n_ops, node_list, n_out, n_in), init_names)
    params = param_bytes = other = other_bytes = other_count = 0
    ext_count = ext_bytes = 0
    ext_files: set[str] = set()
    bits = _DTYPE_BITS.get
    for (name, dt, dims, location), t in zip(init_rows, g.initializer, strict=True):
        n = prod(dims)
        nbytes = (n * bits(dt, 0) + 7) // 8  # dtype_bytes
        if name in weights:
            params += n
            param_bytes += nbytes
        else:  # grids, anchors, shape constants, BatchNorm running statistics: not parameters
            other += n
            other_bytes += nbytes
            other_count += 1
        if location == 1:
            ext_count += 1
            ext_bytes += nbytes
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            ext_files.add(loc)
    for st in g.sparse_initializer:
        n = numel(st.values.dims)
        params += n
        param_bytes += dtype_bytes(st.values.data_type, n)

    default = ("", "ai.onnx")
    if all(d in default for d in set(n_dom)):
        ops: Counter[str] = Counter(n_ops)
    else:
        ops = Counter(op if d in default else f"{d}.{op}" for op, d in zip(n_ops, n_dom, strict=True))
    sub_nodes = 0
    flops_by_op: dict[str, int] = {}
    unknown: list[dict[str, str]] = []
    unknown_count = 0
    init_of, declared_of = types.inits.get, types.declared.get
    memo: dict[tuple, int | None] = {}  # FLOPs are a function of the op and its values' types
    # a symbolic leading dim of a graph input is the batch: FLOPs are linear in it, so they are counted per
    # batch item (the symbol taken as 1, wherever it appears); other symbolic dims leave a node unknown
    batch = {s[0] for vi in g.input if vi.name not in init_meta
             for s in [types.shape(vi.name)] if s and isinstance(s[0], str)}
    per_item: list[str] = []  # the batch symbols that a counted node's shapes held

    def shape(name: str) -> list | None:
        s = types.shape(name)
        if s is None or not batch or not any(d in batch for d in s if isinstance(d, str)):
            return s
        per_item.extend(d for d in s if isinstance(d, str) and d in batch)
        return [1 if isinstance(d, str) and d in batch else d for d in s]
    for k in [k for k, op in enumerate(n_ops) if op in _FLOP_OR_SUBGRAPH or n_dom[k] not in default]:
        op, domain = n_ops[k], n_dom[k]
        if op in ("If", "Loop", "Scan") or domain not in default:
            for a in node_list[k].attribute:
                for sg in ([a.g] if a.type == 5 else list(a.graphs) if a.type == 10 else []):
                    sub_nodes += _count_nodes(sg)
        if op not in FLOP_OPS or domain not in default:
            continue
        n = node_list[k]
        ins, outs = n_in[k], n_out[k]
        # each value by its type: an initializer's (elem_type, dims), or the declared type (one object per
        # distinct type); None for unknown
        x0 = ins[0] if ins else ""
        x1 = ins[1] if len(ins) > 1 else ""
        y = outs[0] if outs else ""
        key = (op, len(ins), (init_of(x0) or declared_of(x0)) if x0 else None,
               (init_of(x1) or declared_of(x1)) if x1 else None, (init_of(y) or declared_of(y)) if y else None,
               next((at.i for at in n.attribute if at.name == "transA"), 0) if op == "Gemm" else 0)
        f = memo.get(key, -1)
        if f == -1:
            mark = len(per_item)
            f = memo[key] = _node_flops(n, shape, ins, outs)
            if f is None:
                del per_item[mark:]
        if f is None:
            unknown_count += 1
            if len(unknown) < _UNKNOWN_LISTED:
                unknown.append({"op": op, "name": n.name})
        else:
            flops_by_op[op] = flops_by_op.get(op, 0) + f
    histogram = dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))

    file_bytes = None
    if path is not None:
        try:
            file_bytes = Path(path).stat().st_size
        except OSError:
            pass
    report: dict[str, Any] = {
        "path": path,
        "file_bytes": file_bytes,
        "ir_version": int(model.ir_version),
        "opset_import": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "graph_name": g.name,
        "inputs": [_value_info(vi) for vi in g.input if vi.name not in init_names],
        "outputs": [_value_info(vi) for vi in g.output],
        "node_count": len(g.node),
        "subgraph_node_count": sub_nodes,
        "op_histogram": histogram,
        "watched_ops": {op: ops.get(op, 0) for op in WATCHED_OPS},
        "initializer_count": len(g.initializer) + len(g.sparse_initializer),
        "parameters": params,  # learned weights: what `yexport info` calls parameters (of the fused model)
        "parameter_bytes": param_bytes,
        "constants": {"values": other, "bytes": other_bytes, "initializers": other_count,
                      "what": "initializers that are not layer weights: Detect grids and anchors, shape "
                              "constants, BatchNorm running statistics"},
        "external_data": {"initializers": ext_count, "bytes": ext_bytes, "files": sorted(ext_files)},
        "flops": {
            "total": sum(flops_by_op.values()),
            "by_op": dict(sorted(flops_by_op.items())),
            "unknown_nodes": unknown_count,
            "unknown": unknown,
            "per_batch_item": sorted(set(per_item)),  # symbolic batch dims taken as 1 ([]: none)
            "convention": "2 per multiply-add; Conv, ConvTranspose, Gemm, MatMul only",
        },
        "metadata_props": {p.key: p.value for p in model.metadata_props},
        "shape_inference": "ok" if infer_error is None else infer_error,
    }
    return report


# (op, input positions) whose initializers are learned weights; every other initializer is a constant
_WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                  "BatchNormalization": (1, 2), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
                  "QLinearConv": (3, 8), "ConvInteger": (1,), "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3),
                  "Embedding": (0,), "Gather": ()}


def _weight_names(g: Any, nodes: tuple[list[str], list[Any], list[Any], dict[int, list[str]]] | None = None,
                  init_names: set[str] | None = None) -> set[str]:
    """Initializers feeding a layer's weight or bias input (Conv W/B, Gemm/MatMul operands, BatchNorm
    scale/bias), also through a Cast or DequantizeLinear (a float16 file with float32 I/O).

    ``nodes`` (op types, the NodeProtos, their outputs, and the inputs of the nodes that take
    weights, by index) and ``init_names`` save reading the graph again."""
    if nodes is None:
        node_list = list(g.node)
        ops_ = [n.op_type for n in node_list]
        nodes = (ops_, node_list, [n.output for n in node_list],
                 {k: node_list[k].input[:] for k, op in enumerate(ops_) if op in _WEIGHT_INPUTS})
    n_ops, node_list, n_out, n_in = nodes
    producers: dict[str, int] | None = None  # built only when a weight input is not an initializer
    names: set[str] = set()
    for k, op in enumerate(n_ops):
        picks = _WEIGHT_INPUTS.get(op)
        if not picks:
            continue
        ins = n_in[k]
        for i in picks:
            if i >= len(ins) or not ins[i]:
                continue
            src = ins[i]
            if init_names is None or src not in init_names:
                if producers is None:
                    producers = {o: j for j, outs in enumerate(n_out) for o in outs}
                p = producers.get(src)
                while p is not None and n_ops[p] in ("Cast", "DequantizeLinear", "Identity") and len(node_list[p].input):
                    src = node_list[p].input[0]
                    p = producers.get(src)
            names.add(src)
    for t in g.sparse_initializer:
        names.add(t.values.name)
    return names


_READS_INPUTS = frozenset(_WEIGHT_INPUTS) | frozenset(FLOP_OPS)
_FLOP_OR_SUBGRAPH = frozenset(FLOP_OPS) | {"If", "Loop", "Scan"}


def _count_nodes(graph: Any) -> int:
    total = len(graph.node)
    for n in graph.node:
        for a in n.attribute:
            for sg in ([a.g] if a.type == 5 else list(a.graphs) if a.type == 10 else []):
                total += _count_nodes(sg)
    return total


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _bytes(n: int) -> str:
    from exporter.tables import size_text

    return size_text(n)


def _shape_text(shape: list | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_report(r: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect`'s dict."""
    lines = []
    size = f"{_bytes(r['file_bytes'])}, " if r.get("file_bytes") is not None else ""
    opsets = ", ".join(f"{d} {v}" for d, v in r["opset_import"].items())
    prod = " ".join(x for x in (r["producer"]["name"], r["producer"]["version"]) if x) or "unknown"
    lines.append(f"{r['path'] or '<model>'}  ({size}ir_version {r['ir_version']}, opset {opsets}, producer {prod})")
    from exporter.tables import render

    io_rows = [(kind, v["name"], v["dtype"], _shape_text(v["shape"]))
               for kind, title in (("input", "inputs"), ("output", "outputs")) for v in r[title]]
    lines.extend(render(("", "name", "dtype", "shape"), io_rows).rstrip("\n").splitlines())
    sub = f" (+{r['subgraph_node_count']} in subgraphs)" if r["subgraph_node_count"] else ""
    lines.append(f"nodes:        {r['node_count']}{sub}")
    ext = r["external_data"]
    ext_text = f", {ext['initializers']} external ({_bytes(ext['bytes'])} in {', '.join(ext['files'])})" if ext["initializers"] else ""
    const = r.get("constants") or {}
    n_weights = r["initializer_count"] - const.get("initializers", 0)
    lines.append(f"parameters:   {r['parameters']:,} ({_bytes(r['parameter_bytes'])}) in "
                 f"{n_weights} weight initializers{ext_text}")
    if const.get("initializers"):
        lines.append(f"constants:    {const['values']:,} values ({_bytes(const['bytes'])}) in {const['initializers']} "
                     "other initializers (grids, anchors, shapes, BatchNorm statistics; not parameters)")
    fl = r["flops"]
    by_op = ", ".join(f"{op} {_human(v)}" for op, v in fl["by_op"].items())
    unknown = ""
    if fl["unknown_nodes"]:
        names = ", ".join(u["name"] or u["op"] for u in fl["unknown"][:5])
        more = ", ..." if fl["unknown_nodes"] > 5 else ""
        nodes = "node" if fl["unknown_nodes"] == 1 else "nodes"
        unknown = f"; {fl['unknown_nodes']} {nodes} with unknown shapes not counted ({names}{more})"
    per = fl.get("per_batch_item")
    per_text = f" per batch item ({', '.join(repr(b) for b in per)} taken as 1)" if per else ""
    lines.append(f"FLOPs:        {_human(fl['total'])}{per_text}" + (f" ({by_op})" if by_op else "") +
                 f"  [2 per multiply-add{unknown}]")
    lines.append("watched ops:  " + ", ".join(f"{op} {n}" for op, n in r["watched_ops"].items()))
    lines.append("op histogram: " + ", ".join(f"{op} {n}" for op, n in r["op_histogram"].items()))
    if r["metadata_props"]:
        lines.append("metadata:")
        for k, v in r["metadata_props"].items():
            v1 = v if len(v) <= 100 else v[:97] + "..."
            lines.append(f"  {k} = {v1}".replace("\n", " "))
    if r["shape_inference"] != "ok":
        lines.append(f"note: {r['shape_inference']}")
    return "\n".join(lines) + "\n"
