"""Canonical, name-free view of an ONNX graph: the common ground of ``snapshot`` and ``diff``.

A :class:`CanonGraph` lists the nodes in a canonical topological order and names every value by
position (``%in0`` graph inputs, ``%w3`` initializers, ``%12`` / ``%12.1`` outputs of node 12), so
two files that differ only in node or value names, or in the order of their node list, give the
same canonical graph. The order is depth-first over the dataflow: after a node, the consumers it
made ready come next, so a chain stays together and a node inserted into a chain (BatchNorm after
a Conv) shifts nothing else. Ties between nodes made ready together are broken by structure (the
output they consume, op, attributes, shapes) and last by their position in the file. Nodes that
depend only on constants (``Constant``, shape arithmetic on initializers) are placed right before
their first consumer.

Never imports torch; onnx is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import InputError

SNAPSHOT_MAGIC = "# yexport graph snapshot v1"

# TensorProto.DataType -> short name used in text (f32[1,3,640,640])
_DTYPE_SHORT = {
    0: "?", 1: "f32", 2: "u8", 3: "i8", 4: "u16", 5: "i16", 6: "i32", 7: "i64", 8: "str", 9: "bool",
    10: "f16", 11: "f64", 12: "u32", 13: "u64", 14: "c64", 15: "c128", 16: "bf16",
    17: "f8e4m3fn", 18: "f8e4m3fnuz", 19: "f8e5m2", 20: "f8e5m2fnuz", 21: "u4", 22: "i4", 23: "f4e2m1",
}
# bits per element, for parameter bytes (strings have no fixed size)
_DTYPE_BITS = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
    16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4,
}
# tensor attributes with at most this many elements show their values instead of a hash
_SHOW_VALUES_MAX = 8
_HASH_CHARS = 16
_CHUNK = 1 << 20

_GRAPH_MARK = "\0graph"  # key marking rendered attributes that still hold subgraphs
_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def dtype_short(elem_type: int) -> str:
    return _DTYPE_SHORT.get(elem_type, f"t{elem_type}")


_DTYPE_LONG = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
}


def dtype_long(elem_type: int) -> str:
    """numpy-style name (float32, int64, ...) for reports."""
    if elem_type in _DTYPE_LONG:
        return _DTYPE_LONG[elem_type]
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type{elem_type}"


def dtype_bytes(elem_type: int, numel: int) -> int:
    bits = _DTYPE_BITS.get(elem_type, 0)
    return (numel * bits + 7) // 8


def numel(dims: Any) -> int:
    return math.prod(dims)


def _f32(x: float) -> str:
    import numpy as np

    return str(np.float32(x))


def _safe_dim_name(name: str) -> str:
    return name if _NAME_OK.match(name) else re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "?"


# ---------------------------------------------------------------------------------------------
# types and shape inference


def render_type(tp: Any, keep_params: frozenset[str] | set[str]) -> str:
    """``f32[1,3,640,640]``; symbolic dims keep their name only when declared on the graph's
    inputs/outputs (``keep_params``); other symbols (``unk__3``, exporter-made names) read ``?``."""
    which = tp.WhichOneof("value")
    if which == "tensor_type" or which == "sparse_tensor_type":
        tt = getattr(tp, which)
        dt = dtype_short(tt.elem_type)
        if not tt.HasField("shape"):
            s = f"{dt}[...]"
        else:
            dims = []
            for d in tt.shape.dim:
                v = d.dim_value
                if v:
                    dims.append(str(v))
                    continue
                prm = d.dim_param
                if prm:
                    dims.append(_safe_dim_name(prm) if prm in keep_params else "?")
                else:
                    dims.append("0" if d.HasField("dim_value") else "?")
            s = f"{dt}[{','.join(dims)}]"
        return s if which == "tensor_type" else f"sparse<{s}>"
    if which == "sequence_type":
        return f"seq<{render_type(tp.sequence_type.elem_type, keep_params)}>"
    if which == "optional_type":
        return f"opt<{render_type(tp.optional_type.elem_type, keep_params)}>"
    if which == "map_type":
        mt = tp.map_type
        return f"map<{dtype_short(mt.key_type)},{render_type(mt.value_type, keep_params)}>"
    return "?"


def shape_list(tp: Any) -> list[int | str | None] | None:
    """Shape as a list (ints, symbol names, None for unknown), or None for unknown rank/non-tensor."""
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tp.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def interface_params(graph: Any) -> frozenset[str]:
    names = set()
    for vi in list(graph.input) + list(graph.output):
        tp = vi.type
        if tp.WhichOneof("value") == "tensor_type" and tp.tensor_type.HasField("shape"):
            for d in tp.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param:
                    names.add(d.dim_param)
    return frozenset(names)


class ValueTypes:
    """Types of a graph's values: initializers from their dims, everything else from ONNX shape
    inference (plus the types declared in the file), rendered once per distinct type."""

    def __init__(self, protos: dict[str, Any], inits: dict[str, tuple[int, tuple[int, ...]]],
                 keep_params: frozenset[str], error: str | None = None) -> None:
        self.protos = protos
        self.inits = inits
        self.keep = keep_params
        self.error = error
        self._str: dict[str, str] = {}
        self._by_bytes: dict[bytes, str] = {}
        self._shape_by_bytes: dict[bytes, list | None] = {}

    def render(self, name: str) -> str:
        s = self._str.get(name)
        if s is None:
            it = self.inits.get(name)
            if it is not None:
                s = f"{dtype_short(it[0])}[{','.join(map(str, it[1]))}]"
            else:
                tp = self.protos.get(name)
                if tp is None:
                    s = "?"
                else:
                    key = tp.SerializeToString()
                    s = self._by_bytes.get(key)
                    if s is None:
                        s = render_type(tp, self.keep)
                        self._by_bytes[key] = s
            self._str[name] = s
        return s

    def shape(self, name: str) -> list | None:
        """Shape as a list (ints, symbol names, None for unknown dims); None when unknown."""
        it = self.inits.get(name)
        if it is not None:
            return list(it[1])
        tp = self.protos.get(name)
        if tp is None:
            return None
        key = tp.SerializeToString()
        if key not in self._shape_by_bytes:
            self._shape_by_bytes[key] = shape_list(tp)
        return self._shape_by_bytes[key]

    def with_graph(self, graph: Any) -> ValueTypes:
        """A copy that also knows a subgraph's declared values and initializers."""
        protos = dict(self.protos)
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            if vi.HasField("type"):
                protos[vi.name] = vi.type
        inits = dict(self.inits)
        inits.update((t.name, (t.data_type, tuple(t.dims))) for t in graph.initializer)
        return ValueTypes(protos, inits, self.keep)


# initializers up to this size keep their data for shape inference (Reshape targets, ...)
_INFER_KEEP_BYTES = 64 * 1024


def infer_value_types(model: Any) -> ValueTypes:
    """Types of every value of the main graph that the file or shape inference knows.

    A file that already declares the type of every node output (as ``yexport export`` writes
    them) is taken as it is. Otherwise ONNX shape inference runs, on a light copy of the model
    whose large initializers carry dims only when there are any, so the weights are neither copied
    nor read; if it fails, the declared types remain and ``error`` says why."""
    import onnx
    from onnx import TensorProto

    g = model.graph
    keep = interface_params(g)
    inits: dict[str, tuple[int, tuple[int, ...]]] = {t.name: (t.data_type, tuple(t.dims)) for t in g.initializer}
    for st in g.sparse_initializer:
        inits.setdefault(st.values.name, (st.values.data_type, tuple(st.dims)))
    protos: dict[str, Any] = {vi.name: vi.type for vi in g.value_info}
    for vi in list(g.input) + list(g.output):
        if vi.type.WhichOneof("value"):
            protos[vi.name] = vi.type
    def declared(name: str) -> bool:
        tp = protos.get(name)
        return tp is not None and (tp.WhichOneof("value") != "tensor_type" or tp.tensor_type.HasField("shape"))

    if all(declared(o) for n in g.node for o in n.output if o):
        return ValueTypes(protos, inits, keep)

    big = [t for t in g.initializer if t.ByteSize() > _INFER_KEEP_BYTES]
    if big:
        light = onnx.ModelProto()
        light.ir_version = model.ir_version
        light.opset_import.extend(model.opset_import)
        light.functions.extend(model.functions)
        lg = light.graph
        lg.name = g.name
        lg.node.extend(g.node)
        lg.input.extend(g.input)
        lg.output.extend(g.output)
        lg.value_info.extend(g.value_info)
        lg.sparse_initializer.extend(g.sparse_initializer)
        big_names = {t.name for t in big}
        lg.initializer.extend(t for t in g.initializer if t.name not in big_names)
        for t in big:
            stub = lg.initializer.add()
            stub.name = t.name
            stub.data_type = t.data_type
            stub.dims.extend(t.dims)
            stub.data_location = TensorProto.EXTERNAL
            stub.external_data.add(key="location", value="-")
    else:
        light = model
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=False)
    except Exception as exc:  # noqa: BLE001 - inference is best effort; declared types remain
        msg = str(exc).strip()
        return ValueTypes(protos, inits, keep, f"shape inference failed: {msg.splitlines()[0] if msg else type(exc).__name__}")
    ig = inferred.graph
    protos.update((vi.name, vi.type) for vi in ig.value_info)
    for vi in ig.output:
        if vi.type.WhichOneof("value"):
            protos[vi.name] = vi.type
    return ValueTypes(protos, inits, keep)


# ---------------------------------------------------------------------------------------------
# tensors: content hashes, bytes, arrays


@dataclass(slots=True)
class CInit:
    """One initializer: canonical ref, type, and (for ONNX files) a handle on its data."""

    ref: str
    type: str
    elem_type: int | None = None
    dims: tuple[int, ...] = ()
    name: str | None = None  # original name (ONNX files only; never in snapshots)
    tensor: Any = None  # TensorProto (ONNX files only)
    base_dir: str | None = None
    _digest: str | None = None

    @property
    def external(self) -> bool:
        return self.tensor is not None and self.tensor.data_location == 1

    def digest(self) -> str:
        """Content hash (sha256 of the little-endian bytes, first 16 hex digits). External data is
        read in 1 MiB chunks, never all at once."""
        if self._digest is None:
            h = hashlib.sha256()
            for chunk in _tensor_chunks(self.tensor, self.base_dir):
                h.update(chunk)
            self._digest = h.hexdigest()[:_HASH_CHARS]
        return self._digest

    def data(self) -> bytes:
        """The tensor's canonical little-endian bytes (external data read from its file)."""
        chunks = list(_tensor_chunks(self.tensor, self.base_dir))
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def array(self, data: bytes | None = None) -> Any:
        """The values as a numpy array; ``data`` reuses bytes already read by :meth:`data`."""
        import numpy as np
        from onnx import helper

        elem_type = int(self.elem_type or 0)
        if self.tensor.data_location == 1 or self.tensor.HasField("raw_data"):
            if _DTYPE_BITS.get(elem_type, 0) < 8:
                raise ValueError("packed sub-byte tensors are compared by bytes only")
            np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).newbyteorder("<")
            return np.frombuffer(self.data() if data is None else data, dtype=np_dtype).reshape(self.dims)
        from onnx import numpy_helper

        return numpy_helper.to_array(self.tensor)


def _tensor_chunks(tensor: Any, base_dir: str | None):
    """Yield a tensor's content as canonical little-endian bytes, in chunks for external data."""
    if tensor is None:
        raise InputError("initializer values are not available (a snapshot holds hashes only)")
    if tensor.data_location == 1:  # checked (inside the model's folder, size fits) and streamed
        from exporter.graph.load import iter_external

        yield from iter_external(tensor, base_dir, _CHUNK)
        return
    if tensor.HasField("raw_data"):
        yield tensor.raw_data
        return
    if tensor.data_type == 8:  # strings: length-prefixed, so ["ab","c"] != ["a","bc"]
        for s in tensor.string_data:
            yield len(s).to_bytes(8, "little") + s
        return
    from onnx import numpy_helper

    arr = numpy_helper.to_array(tensor)
    yield arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _tensor_digest(tensor: Any, base_dir: str | None) -> str:
    h = hashlib.sha256()
    for chunk in _tensor_chunks(tensor, base_dir):
        h.update(chunk)
    return h.hexdigest()[:_HASH_CHARS]


def _render_tensor_attr(t: Any, base_dir: str | None) -> str:
    dims = tuple(int(d) for d in t.dims)
    ty = f"{dtype_short(t.data_type)}[{','.join(map(str, dims))}]"
    n = numel(dims)
    if n <= _SHOW_VALUES_MAX and t.data_location != 1 and t.data_type not in (8, 21, 22, 23):
        try:
            from onnx import numpy_helper

            vals = numpy_helper.to_array(t).reshape(-1).tolist()
            if t.data_type in (1, 10, 11, 16):
                text = ",".join(_f32(v) if t.data_type != 11 else repr(float(v)) for v in vals)
            else:
                text = ",".join(str(int(v)) if not isinstance(v, bool) else str(int(v)) for v in vals)
            return f"tensor<{ty}>[{text}]"
        except Exception:  # noqa: BLE001 - odd encodings fall back to the hash
            pass
    try:
        digest = _tensor_digest(t, base_dir)
    except InputError:
        digest = "unreadable"
    return f"tensor<{ty}>#{digest}"


_HASH_RE = re.compile(rf"#[0-9a-f]{{{_HASH_CHARS}}}|#unreadable")


def strip_hashes(text: str) -> str:
    """Drop content hashes from a rendered attribute (for ``--ignore initializer-values``)."""
    return _HASH_RE.sub("", text)


# ---------------------------------------------------------------------------------------------
# canonical graph


class CNode:
    """One node in canonical form: refs and rendered types of its inputs and outputs."""

    __slots__ = ("index", "op", "inputs", "input_types", "outputs", "output_types", "attrs", "name", "body",
                 "implicit")

    def __init__(self, index: int, op: str, inputs: list[str], input_types: list[str], outputs: list[str],
                 output_types: list[str], attrs: dict[str, str], name: str | None = None,
                 body: list[str] | tuple[str, ...] = (), implicit: list[str] | tuple[str, ...] = ()) -> None:
        self.index = index
        self.op = op  # "Conv", or "domain.Op" outside the default domain
        self.inputs = inputs  # canonical refs; "_" for an omitted optional input
        self.input_types = input_types
        self.outputs = outputs
        self.output_types = output_types
        self.attrs = attrs  # rendered values, sorted by name; shared between nodes: never mutate
        self.name = name  # original node name (ONNX files only; never in snapshots)
        self.body = body  # rendered subgraphs, if any
        self.implicit = implicit  # outer values its subgraphs read

    def __repr__(self) -> str:
        return f"CNode({render_node(self)!r})"


@dataclass(slots=True)
class CValue:
    ref: str
    name: str | None
    type: str
    source: str | None = None  # for outputs: the ref that feeds it


@dataclass
class CanonGraph:
    kind: str  # "onnx" | "snapshot"
    path: str | None
    ir_version: int | None
    opsets: dict[str, int]
    metadata: dict[str, str]
    inputs: list[CValue]
    outputs: list[CValue]
    initializers: list[CInit]
    nodes: list[CNode]
    producer: str | None = None
    notes: list[str] = field(default_factory=list)

    def init_by_ref(self) -> dict[str, CInit]:
        return {i.ref: i for i in self.initializers}

    def producers(self) -> dict[str, tuple[int, int]]:
        """ref -> (node index, output slot)."""
        out: dict[str, tuple[int, int]] = {}
        for n in self.nodes:
            for j, r in enumerate(n.outputs):
                if r != "_":
                    out[r] = (n.index, j)
        return out


def _subgraph_free_names(graph: Any) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: set[str] = set()
    for n in graph.node:
        used.update(i for i in n.input if i)
        for a in n.attribute:
            for sg in _attr_graphs(a):
                used |= _subgraph_free_names(sg)
        defined.update(o for o in n.output if o)
    used.update(o.name for o in graph.output)
    return used - defined


def _attr_graphs(a: Any) -> list[Any]:
    if a.type == 5:  # GRAPH
        return [a.g]
    if a.type == 10:  # GRAPHS
        return list(a.graphs)
    return []


class _Canonicalizer:
    def __init__(self, graph: Any, types: ValueTypes, base_dir: str | None, outer: dict[str, str] | None = None) -> None:
        self.g = graph
        self.types = types
        self.keep = types.keep
        self.base_dir = base_dir
        self.outer = outer  # name -> placeholder, filled on first use (subgraphs only)
        self.outer_refs: dict[str, str] = {}  # placeholder -> outer name
        self._attr_cache: dict[bytes, dict[str, str]] = {}

    def run(self) -> tuple[list[CValue], list[CValue], list[CInit], list[CNode], list[str]]:
        g = self.g
        vtype = self.types.render
        nodes = list(g.node)
        n_nodes = len(nodes)
        n_in: list[list[str]] = []
        n_out: list[list[str]] = []
        n_op: list[str] = []
        n_name: list[str] = []
        n_attrs: list[dict[str, str]] = []
        deps: list[list[str]] = []  # what each node reads (no empty names), plus implicit reads below
        producer: dict[str, tuple[int, int]] = {}
        consumers: dict[str, list[int]] = {}
        render_attrs = self.render_attrs
        for i, nd in enumerate(nodes):
            ins, outs = list(nd.input), list(nd.output)
            n_in.append(ins)
            n_out.append(outs)
            domain = nd.domain
            n_op.append(nd.op_type if not domain or domain == "ai.onnx" else f"{domain}.{nd.op_type}")
            n_name.append(nd.name)
            n_attrs.append(render_attrs(nd) if len(nd.attribute) else {})
            if "" in ins:
                ins = [x for x in ins if x]
            deps.append(ins)
            for x in ins:
                lst = consumers.get(x)
                if lst is None:
                    consumers[x] = [i]
                else:
                    lst.append(i)
            if len(outs) == 1:
                if outs[0]:
                    producer[outs[0]] = (i, 0)
            else:
                for j, o in enumerate(outs):
                    if o:
                        producer[o] = (i, j)
        init_list = list(g.initializer) + [t.values for t in g.sparse_initializer]
        init_by_name = {t.name: t for t in init_list}
        graph_inputs = [vi for vi in g.input if vi.name not in init_by_name]
        gin_pos = {vi.name: k for k, vi in enumerate(graph_inputs)}

        # If/Loop/Scan also read the outer values their bodies use
        implicit: dict[int, list[str]] = {}
        for i, attrs in enumerate(n_attrs):
            if _GRAPH_MARK in attrs:
                extra = []
                for a in nodes[i].attribute:
                    for sg in _attr_graphs(a):
                        extra.extend(sorted(_subgraph_free_names(sg)))
                implicit[i] = list(dict.fromkeys(extra))
                deps[i] = deps[i] + implicit[i]
                for x in implicit[i]:
                    consumers.setdefault(x, []).append(i)

        # constant-derived nodes: every dependency is an initializer or another constant-derived node
        is_const = [False] * n_nodes
        const_values = set(init_by_name)
        for _ in range(2):  # file order is topological in valid models; a second pass tolerates odd orders
            for i in range(n_nodes):
                if not is_const[i] and const_values.issuperset(deps[i]):
                    is_const[i] = True
                    const_values.update(o for o in n_out[i] if o)

        # how many distinct non-constant producer nodes each node waits for, and which
        # constant-derived producers must be placed just before it
        var_prod = {x: pr[0] for x, pr in producer.items() if not is_const[pr[0]]}
        waits = [0] * n_nodes
        const_prods: dict[int, list[int]] = {}
        for i in range(n_nodes):
            if is_const[i]:
                continue
            ds = deps[i]
            prods = {var_prod[x] for x in ds if x in var_prod}
            waits[i] = len(prods) - (i in prods)
            cp = [producer[x][0] for x in ds if x in const_values and x in producer]
            if cp:
                const_prods[i] = cp

        def key(i: int, via: int) -> tuple:
            return (via, n_op[i], tuple(n_attrs[i].items()), tuple(vtype(o) for o in n_out[i]), i)

        order: list[int] = []
        emitted = [False] * n_nodes

        def emit_const(i: int) -> None:
            stack = [(i, False)]  # post-order over constant producers, iteratively
            while stack:
                k, done = stack.pop()
                if emitted[k]:
                    continue
                if done:
                    emitted[k] = True
                    order.append(k)
                    continue
                stack.append((k, True))
                for x in reversed(deps[k]):
                    pr = producer.get(x)
                    if pr is not None and is_const[pr[0]] and not emitted[pr[0]]:
                        stack.append((pr[0], False))

        initial = []
        for i in range(n_nodes):
            if not is_const[i] and waits[i] == 0:
                gpos = [gin_pos[x] for x in deps[i] if x in gin_pos]
                initial.append(key(i, min(gpos) if gpos else len(gin_pos)))
        initial.sort(reverse=True)
        stack = [k[-1] for k in initial]
        while stack:
            i = stack.pop()
            if emitted[i]:
                continue
            if i in const_prods:
                for q in const_prods[i]:
                    if not emitted[q]:
                        emit_const(q)
            emitted[i] = True
            order.append(i)
            outs = n_out[i]
            if len(outs) == 1:
                cons = consumers.get(outs[0]) if outs[0] else None
                cand = [(c, 0) for c in (cons if len(cons) == 1 else dict.fromkeys(cons))] if cons else []
            else:
                seen: dict[int, int] = {}
                for j, o in enumerate(outs):
                    for c in consumers.get(o, ()) if o else ():
                        seen.setdefault(c, j)
                cand = list(seen.items())
            ready: list[tuple[int, int]] = []
            for c, j in cand:  # each consumer once, with the first output slot it reads
                if is_const[c] or emitted[c]:
                    continue
                waits[c] -= 1
                if waits[c] == 0:
                    ready.append((c, j))
            if len(ready) == 1:
                stack.append(ready[0][0])
            elif ready:
                stack.extend(k[-1] for k in sorted((key(c, j) for c, j in ready), reverse=True))
        # leftovers: constants feeding only graph outputs or nothing, and nodes caught in cycles
        for o in g.output:
            pr = producer.get(o.name)
            if pr is not None and is_const[pr[0]] and not emitted[pr[0]]:
                emit_const(pr[0])
        notes: list[str] = []
        for i in range(n_nodes):
            if not emitted[i]:
                if is_const[i]:
                    emit_const(i)
                else:
                    if not notes:
                        notes.append("graph is not a DAG or reads undefined values; leftover nodes kept in file order")
                    emitted[i] = True
                    order.append(i)

        # canonical refs
        ref: dict[str, str] = {}
        inputs: list[CValue] = []
        for k, vi in enumerate(graph_inputs):
            ref[vi.name] = f"%in{k}"
            inputs.append(CValue(f"%in{k}", vi.name, vtype(vi.name)))
        for k, i in enumerate(order):
            outs = n_out[i]
            if outs and outs[0]:
                ref[outs[0]] = f"%{k}"
            for j in range(1, len(outs)):
                if outs[j]:
                    ref[outs[j]] = f"%{k}.{j}"
        inits: list[CInit] = []
        unknown: dict[str, str] = {}
        init_types = self.types.inits

        def resolve(name: str) -> str:
            if not name:
                return "_"
            r = ref.get(name)
            if r is not None:
                return r
            t = init_by_name.get(name)
            if t is not None:
                r = f"%w{len(inits)}"
                ref[name] = r
                et, dims = init_types.get(name) or (t.data_type, tuple(t.dims))
                inits.append(CInit(r, vtype(name), et, dims, name, t, self.base_dir))
                return r
            if self.outer is not None:
                ph = self.outer.get(name)
                if ph is None:
                    ph = f"%^{len(self.outer_refs)}"
                    self.outer[name] = ph
                    self.outer_refs[ph] = name
                return ph
            r = unknown.get(name)
            if r is None:
                r = unknown[name] = f"%undef{len(unknown)}"
                if not any("undefined" in n for n in notes):
                    notes.append("some node inputs are produced by nothing (undefined values)")
            return r

        cnodes: list[CNode] = []
        tcache = self.types._str
        for k, i in enumerate(order):
            ins = n_in[i]
            outs = n_out[i]
            attrs = n_attrs[i]
            body: list[str] | tuple[str, ...] = ()
            imp: list[str] | tuple[str, ...] = ()
            if i in implicit:
                attrs, body = self.subgraph_attrs(nodes[i], attrs, resolve)
                imp = [resolve(x) for x in implicit[i]]
            in_refs = []
            in_types = []
            for x in ins:
                if x:
                    r = ref.get(x)
                    in_refs.append(r if r is not None else resolve(x))
                    t = tcache.get(x)
                    in_types.append(t if t is not None else vtype(x))
                else:
                    in_refs.append("_")
                    in_types.append("")
            cnodes.append(CNode(
                k, n_op[i], in_refs, in_types,
                [ref[o] if o else "_" for o in outs], [vtype(o) if o else "" for o in outs],
                attrs, n_name[i] or None, body, imp))
        for t in init_list:  # initializers nobody reads keep a ref too
            resolve(t.name)
        outputs = [CValue(f"%out{k}", o.name, vtype(o.name), resolve(o.name)) for k, o in enumerate(g.output)]
        return inputs, outputs, inits, cnodes, notes

    def render_attrs(self, nd: Any) -> dict[str, str]:
        """Rendered attributes, sorted by name (cached: most nodes share a few attribute sets).
        A node with subgraphs gets a ``_GRAPH_MARK`` key, replaced later by subgraph digests."""
        attrs = nd.attribute
        if not attrs:
            return {}
        key = b"".join([a.SerializeToString() for a in attrs])
        out = self._attr_cache.get(key)
        if out is None:
            out = {}
            has_graph = False
            for a in sorted(attrs, key=lambda a: a.name):
                if a.type in (5, 10):
                    has_graph = True
                    out[a.name] = "graph"
                else:
                    out[a.name] = self.render_attr(a)
            if has_graph:
                out[_GRAPH_MARK] = ""
            else:
                self._attr_cache[key] = out
        return out

    def subgraph_attrs(self, nd: Any, attrs: dict[str, str], outer_resolve) -> tuple[dict[str, str], list[str]]:
        attrs = {k: v for k, v in attrs.items() if k != _GRAPH_MARK}
        body: list[str] = []
        for a in nd.attribute:
            graphs = _attr_graphs(a)
            if not graphs:
                continue
            texts = []
            for gi, sg in enumerate(graphs):
                lines, outer_map = self.subgraph_lines(sg, outer_resolve)
                digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:_HASH_CHARS]
                texts.append(f"graph#{digest}")
                body.append(f"{a.name if len(graphs) == 1 else f'{a.name}[{gi}]'}:")
                body.extend(f"  {ln}" for ln in outer_map + lines)
            attrs[a.name] = texts[0] if a.type == 5 else "[" + ",".join(texts) + "]"
        return attrs, body

    def render_attr(self, a: Any) -> str:
        if a.ref_attr_name:
            return "@" + a.ref_attr_name
        t = a.type
        if t == 2:
            return str(a.i)
        if t == 1:
            return _f32(a.f)
        if t == 3:
            return json.dumps(a.s.decode("utf-8", "backslashreplace"))
        if t == 7:
            return "[" + ",".join(str(v) for v in a.ints) + "]"
        if t == 6:
            return "[" + ",".join(_f32(v) for v in a.floats) + "]"
        if t == 8:
            return json.dumps([s.decode("utf-8", "backslashreplace") for s in a.strings], separators=(",", ":"))
        if t == 4:
            return _render_tensor_attr(a.t, self.base_dir)
        if t == 9:
            return "[" + ",".join(_render_tensor_attr(x, self.base_dir) for x in a.tensors) + "]"
        if t == 11:
            return "sparse" + _render_tensor_attr(a.sparse_tensor.values, self.base_dir)
        if t == 13:
            return render_type(a.tp, self.keep)
        if t == 14:
            return "[" + ",".join(render_type(x, self.keep) for x in a.type_protos) + "]"
        return "?"

    def subgraph_lines(self, sg: Any, outer_resolve) -> tuple[list[str], list[str]]:
        sub = _Canonicalizer(sg, self.types.with_graph(sg), self.base_dir, outer={})
        ins, outs, inits, nodes, _ = sub.run()
        lines = render_body(CanonGraph("onnx", None, None, {}, {}, ins, outs, inits, nodes), io_names=False)
        outer_map = [f"outer {ph} = {outer_resolve(name)}" for ph, name in sub.outer_refs.items()]
        return lines, outer_map


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building tens of thousands of small acyclic objects
    otherwise triggers full collections over and over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def canonicalize(model: Any, *, base_dir: str | None = None, path: str | None = None) -> CanonGraph:
    """The canonical view of a ModelProto (weights are only touched when a hash is asked for)."""
    with no_gc():
        types = infer_value_types(model)
        inputs, outputs, inits, nodes, notes = _Canonicalizer(model.graph, types, base_dir).run()
    if types.error:
        notes.insert(0, types.error)
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain or "ai.onnx"] = int(o.version)
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x) or None
    meta = {p.key: p.value for p in model.metadata_props}
    return CanonGraph("onnx", path, int(model.ir_version), dict(sorted(opsets.items())), dict(sorted(meta.items())),
                      inputs, outputs, inits, nodes, producer, notes)


def load_any(src: Any) -> Any:
    """(ModelProto, base_dir, path) from a path or a ModelProto."""
    from exporter.graph.load import load_onnx

    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        return load_onnx(p, load_weights=False), str(p.resolve().parent), str(src)
    if hasattr(src, "graph") and hasattr(src, "opset_import"):
        return src, None, None
    raise InputError(f"expected an ONNX file path or a ModelProto, got {type(src).__name__}")


# ---------------------------------------------------------------------------------------------
# snapshot text


def render_node(n: CNode) -> str:
    outs = ", ".join(f"{r}: {t}" if r != "_" else "_" for r, t in zip(n.outputs, n.output_types, strict=False))
    ins = ", ".join(f"{r}: {t}" if r != "_" else "_" for r, t in zip(n.inputs, n.input_types, strict=False))
    line = f"{outs or '()'} = {n.op}({ins})"
    if n.attrs:
        line += "  " + "  ".join(f"{k}={v}" for k, v in n.attrs.items())
    return line


def render_body(g: CanonGraph, *, io_names: bool = True, hashes: bool = True) -> list[str]:
    lines = ["inputs:"]
    for v in g.inputs:
        nm = f" {json.dumps(v.name)}" if io_names and v.name is not None else ""
        lines.append(f"  {v.ref}{nm}: {v.type}")
    lines.append("outputs:")
    for v in g.outputs:
        nm = f" {json.dumps(v.name)}" if io_names and v.name is not None else ""
        lines.append(f"  {v.ref}{nm}: {v.type} = {v.source}")
    lines.append("initializers:")
    for i in g.initializers:
        lines.append(f"  {i.ref}: {i.type} #{i.digest()}" if hashes else f"  {i.ref}: {i.type}")
    lines.append("nodes:")
    for n in g.nodes:
        lines.append("  " + render_node(n))
        lines.extend(f"    | {b}" for b in n.body)
    return lines


def render_snapshot(g: CanonGraph, *, io_names: bool = True, metadata: bool = True, run_metadata: bool = False) -> str:
    """Snapshot text; the metadata is the graph's identity (see ``exporter.stages.metadata``), plus
    the run record (parity options, stages, source path, versions) with ``run_metadata``."""
    from exporter.stages.metadata import graph_identity

    lines = [SNAPSHOT_MAGIC, f"ir_version: {g.ir_version}",
             "opsets: " + " ".join(f"{d}={v}" for d, v in g.opsets.items())]
    if metadata:
        lines.append("metadata:")
        for k, v in graph_identity(g.metadata, include_run=run_metadata).items():
            lines.append(f"  {json.dumps(k)}: {json.dumps(v)}")
    lines.extend(render_body(g, io_names=io_names))
    return "\n".join(lines) + "\n"


def _unquoted(s: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """``(index, char, bracket depth after it)`` for each character of ``s`` outside double quotes."""
    depth, quoted, i = 0, False, start
    while i < len(s):
        c = s[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            quoted = c != '"'
        elif c == '"':
            quoted = True
        else:
            if c in "[(<{":
                depth += 1
            elif c in "])>}":
                depth -= 1
            yield i, c, depth
        i += 1


def split_top(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    out, start = [], 0
    for i, c, depth in _unquoted(s):
        if i >= start and depth == 0 and c not in "])>}" and s.startswith(sep, i):
            out.append(s[start:i])
            start = i + len(sep)
    out.append(s[start:])
    return out


def _split_ref_type(s: str) -> tuple[str, str]:
    s = s.strip()
    if s == "_":
        return "_", ""
    r, _, t = s.partition(": ")
    return r.strip(), t.strip()


def parse_node_line(line: str, index: int) -> CNode:
    head, eq, rest = line.partition(" = ")
    if not eq:
        raise ValueError("expected 'outputs = Op(inputs)'")
    k = rest.find("(")
    if k <= 0:
        raise ValueError("expected 'Op(' after '='")
    op = rest[:k]
    # the ')' that closes the '(' at k
    i = next((j for j, c, depth in _unquoted(rest, k) if depth == 0 and c in "])>}"), -1)
    if i < 0:
        raise ValueError("unbalanced parentheses")
    ins_text, attr_text = rest[k + 1:i], rest[i + 1:].strip()
    outs = [_split_ref_type(x) for x in split_top(head, ", ")] if head != "()" else []
    ins = [_split_ref_type(x) for x in split_top(ins_text, ", ")] if ins_text.strip() else []
    attrs: dict[str, str] = {}
    if attr_text:
        for item in split_top(attr_text, "  "):
            item = item.strip()
            if not item:
                continue
            name, eq2, val = item.partition("=")
            if not eq2:
                raise ValueError(f"bad attribute {item!r}")
            attrs[name] = val
    return CNode(index, op, [r for r, _ in ins], [t for _, t in ins], [r for r, _ in outs], [t for _, t in outs], attrs)


_VALUE_RE = re.compile(r'(?P<ref>%\S+?)(?: (?P<name>"(?:[^"\\]|\\.)*"))?: (?P<type>.+?)(?: = (?P<src>\S+))?\Z')
_INIT_RE = re.compile(r"(?P<ref>%\S+): (?P<type>\S+)(?: #(?P<hash>\S+))?\Z")


def parse_snapshot(text: str, path: str | None = None) -> CanonGraph:
    """Read snapshot text back into a :class:`CanonGraph` (hashes, no values)."""
    where = path or "<snapshot>"
    lines = text.splitlines()
    if not lines or lines[0].strip() != SNAPSHOT_MAGIC:
        raise InputError(f"{where}: not a yexport snapshot (first line must be {SNAPSHOT_MAGIC!r})")
    g = CanonGraph("snapshot", path, None, {}, {}, [], [], [], [])
    section = None
    for ln, raw in enumerate(lines[1:], start=2):
        if not raw.strip() or raw.startswith("#") or raw.startswith("    |"):
            continue
        try:
            if not raw.startswith(" "):
                key, _, val = raw.partition(":")
                val = val.strip()
                if key == "ir_version":
                    g.ir_version = int(val) if val and val != "None" else None
                elif key == "opsets":
                    for item in val.split():
                        d, _, v = item.rpartition("=")
                        g.opsets[d] = int(v)
                elif key in ("metadata", "inputs", "outputs", "initializers", "nodes"):
                    section = key
                else:
                    raise ValueError(f"unknown section {key!r}")
                continue
            body = raw.strip()
            if section == "metadata":
                obj = json.loads("{" + body + "}")
                g.metadata.update(obj)
            elif section in ("inputs", "outputs"):
                m = _VALUE_RE.match(body)
                if not m:
                    raise ValueError(f"bad {section[:-1]} line")
                name = json.loads(m["name"]) if m["name"] else None
                (g.inputs if section == "inputs" else g.outputs).append(CValue(m["ref"], name, m["type"], m["src"]))
            elif section == "initializers":
                m = _INIT_RE.match(body)
                if not m:
                    raise ValueError("bad initializer line")
                g.initializers.append(CInit(m["ref"], m["type"], _digest=m["hash"]))
            elif section == "nodes":
                g.nodes.append(parse_node_line(body, len(g.nodes)))
            else:
                raise ValueError("line outside any section")
        except (ValueError, json.JSONDecodeError) as exc:
            raise InputError(f"{where}:{ln}: malformed snapshot line ({exc})") from None
    return g
