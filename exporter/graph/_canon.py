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

import hashlib
import json
import os
import re
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
# initializers at most this many elements keep their data for shape inference (Reshape targets...)
_INFER_KEEP_ELEMS = 4096
# tensor attributes with at most this many elements show their values instead of a hash
_SHOW_VALUES_MAX = 8
_HASH_CHARS = 16
_CHUNK = 1 << 20

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
    n = 1
    for d in dims:
        n *= int(d)
    return n


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


def infer_value_types(model: Any) -> tuple[dict[str, Any], str | None]:
    """name -> TypeProto for every value of the main graph whose type is known.

    Shape inference runs on a light copy of the model whose large initializers carry dims only,
    so it neither copies nor reads the weights. Returns the types and, when inference failed,
    why (the types declared in the file are still used)."""
    import onnx
    from onnx import TensorProto

    g = model.graph
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
    for t in g.initializer:
        if numel(t.dims) <= _INFER_KEEP_ELEMS and t.data_location != TensorProto.EXTERNAL:
            lg.initializer.append(t)
        else:
            stub = lg.initializer.add()
            stub.name = t.name
            stub.data_type = t.data_type
            stub.dims.extend(t.dims)
            stub.data_location = TensorProto.EXTERNAL
            e = stub.external_data.add()
            e.key, e.value = "location", "-"
    error = None
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=False)
        ig = inferred.graph
    except Exception as exc:  # noqa: BLE001 - inference is best effort; declared types remain
        error = f"shape inference failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ig = lg
    types: dict[str, Any] = {}
    for t in g.initializer:
        tp = onnx.TypeProto()
        tp.tensor_type.elem_type = t.data_type
        tp.tensor_type.shape.SetInParent()
        for d in t.dims:
            tp.tensor_type.shape.dim.add().dim_value = d
        types[t.name] = tp
    for vi in list(ig.value_info) + list(ig.input) + list(ig.output):
        if vi.HasField("type") and vi.type.WhichOneof("value"):
            types[vi.name] = vi.type
    return types, error


# ---------------------------------------------------------------------------------------------
# tensors: content hashes, bytes, arrays


@dataclass
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
        return b"".join(_tensor_chunks(self.tensor, self.base_dir))

    def array(self) -> Any:
        import numpy as np
        from onnx import helper

        elem_type = int(self.elem_type or 0)
        np_dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        if self.tensor.data_location == 1 or self.tensor.HasField("raw_data"):
            if _DTYPE_BITS.get(elem_type, 0) < 8:
                raise ValueError("packed sub-byte tensors are compared by bytes only")
            return np.frombuffer(self.data(), dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(self.dims)
        from onnx import numpy_helper

        return numpy_helper.to_array(self.tensor)


def _external_info(tensor: Any) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _tensor_chunks(tensor: Any, base_dir: str | None):
    """Yield a tensor's content as canonical little-endian bytes, in chunks for external data."""
    if tensor is None:
        raise InputError("initializer values are not available (a snapshot holds hashes only)")
    if tensor.data_location == 1:
        info = _external_info(tensor)
        loc = info.get("location", "")
        path = Path(base_dir or ".") / loc
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                remaining = length
                while remaining is None or remaining > 0:
                    chunk = fh.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
                    if not chunk:
                        break
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk
        except OSError as exc:
            raise InputError(f"external data of initializer {tensor.name!r} unreadable: {loc}: "
                             f"{exc.strerror or exc}") from None
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


@dataclass
class CNode:
    index: int
    op: str  # "Conv", or "domain.Op" outside the default domain
    inputs: list[str]  # canonical refs; "_" for an omitted optional input
    input_types: list[str]
    outputs: list[str]
    output_types: list[str]
    attrs: dict[str, str]
    name: str | None = None  # original node name (ONNX files only; never in snapshots)
    body: list[str] = field(default_factory=list)  # rendered subgraphs, if any
    implicit: list[str] = field(default_factory=list)  # outer values its subgraphs read

    def label(self) -> str:
        return f"{self.op} {json.dumps(self.name)}" if self.name else self.op


@dataclass
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


def _op_name(node: Any) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


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
    def __init__(self, graph: Any, types: dict[str, Any], keep_params: frozenset[str], base_dir: str | None,
                 prefix: str = "%", outer: dict[str, str] | None = None) -> None:
        self.g = graph
        self.types = types
        self.keep = keep_params
        self.base_dir = base_dir
        self.prefix = prefix
        self.outer = outer  # name -> placeholder, filled on first use (subgraphs only)
        self.outer_refs: dict[str, str] = {}  # placeholder -> outer name
        self._type_cache: dict[str, str] = {}

    def vtype(self, name: str) -> str:
        s = self._type_cache.get(name)
        if s is None:
            tp = self.types.get(name)
            s = render_type(tp, self.keep) if tp is not None else "?"
            self._type_cache[name] = s
        return s

    def run(self) -> tuple[list[CValue], list[CValue], list[CInit], list[CNode], list[str]]:
        g = self.g
        p = self.prefix
        nodes = list(g.node)
        n_nodes = len(nodes)
        init_names = [t.name for t in g.initializer] + [t.values.name for t in g.sparse_initializer]
        init_set = set(init_names)
        graph_inputs = [vi for vi in g.input if vi.name not in init_set]
        gin_pos = {vi.name: k for k, vi in enumerate(graph_inputs)}

        producer: dict[str, tuple[int, int]] = {}
        for i, nd in enumerate(nodes):
            for j, o in enumerate(nd.output):
                if o:
                    producer[o] = (i, j)

        deps: list[list[str]] = []  # per node: value names it reads (inputs + implicit)
        implicit: list[list[str]] = []
        for nd in nodes:
            extra: list[str] = []
            for a in nd.attribute:
                for sg in _attr_graphs(a):
                    extra.extend(sorted(_subgraph_free_names(sg)))
            implicit.append(extra)
            deps.append([x for x in nd.input if x] + extra)

        consumers: dict[str, list[int]] = {}
        for i, ds in enumerate(deps):
            for x in ds:
                lst = consumers.setdefault(x, [])
                if not lst or lst[-1] != i:
                    lst.append(i)

        # constant-derived nodes: every dependency is an initializer or another constant-derived node
        is_const = [False] * n_nodes
        const_values = set(init_set)
        for _ in range(2):  # file order is topological in valid models; a second pass tolerates odd orders
            for i, nd in enumerate(nodes):
                if not is_const[i] and all(x in const_values for x in deps[i]):
                    is_const[i] = True
                    const_values.update(o for o in nd.output if o)

        # how many distinct non-constant producer nodes each node waits for
        waits: list[int] = [0] * n_nodes
        for i in range(n_nodes):
            if is_const[i]:
                continue
            prods = {producer[x][0] for x in deps[i] if x in producer and not is_const[producer[x][0]]}
            prods.discard(i)
            waits[i] = len(prods)

        attr_cache: dict[int, dict[str, str]] = {}

        def attrs_of(i: int) -> dict[str, str]:
            r = attr_cache.get(i)
            if r is None:
                r = self.render_attrs(nodes[i])
                attr_cache[i] = r
            return r

        def key(i: int, via: int) -> tuple:
            nd = nodes[i]
            return (via, _op_name(nd), tuple(sorted(attrs_of(i).items())),
                    tuple(self.vtype(o) for o in nd.output), i)

        order: list[int] = []
        emitted = [False] * n_nodes

        def emit_const(i: int) -> None:
            # post-order over constant producers, iteratively
            stack = [(i, False)]
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

        def emit(i: int, stack: list[int]) -> None:
            for x in deps[i]:
                pr = producer.get(x)
                if pr is not None and is_const[pr[0]] and not emitted[pr[0]]:
                    emit_const(pr[0])
            emitted[i] = True
            order.append(i)
            ready: list[tuple] = []
            seen: set[int] = set()
            for j, o in enumerate(nodes[i].output):
                if not o:
                    continue
                for c in consumers.get(o, ()):
                    if c in seen or is_const[c] or emitted[c]:
                        continue
                    seen.add(c)
                    waits[c] -= 1
                    if waits[c] == 0:
                        ready.append(key(c, j))
            ready.sort(reverse=True)
            stack.extend(k[-1] for k in ready)

        initial = []
        for i in range(n_nodes):
            if not is_const[i] and waits[i] == 0:
                gpos = [gin_pos[x] for x in deps[i] if x in gin_pos]
                initial.append(key(i, min(gpos) if gpos else len(gin_pos)))
        initial.sort(reverse=True)
        stack = [k[-1] for k in initial]
        while stack:
            i = stack.pop()
            if not emitted[i]:
                emit(i, stack)
        # leftovers: constants feeding only graph outputs or nothing, and nodes caught in cycles
        out_names = [o.name for o in g.output]
        for name in out_names:
            pr = producer.get(name)
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
            r = f"{p}in{k}"
            ref[vi.name] = r
            inputs.append(CValue(r, vi.name, self.vtype(vi.name)))
        pos = {}
        for k, i in enumerate(order):
            pos[i] = k
            nd = nodes[i]
            for j, o in enumerate(nd.output):
                if o:
                    ref[o] = f"{p}{k}" if j == 0 else f"{p}{k}.{j}"
        init_by_name = {t.name: t for t in g.initializer}
        for t in g.sparse_initializer:
            init_by_name.setdefault(t.values.name, t.values)
        inits: list[CInit] = []

        def init_ref(name: str) -> str:
            r = ref.get(name)
            if r is None:
                t = init_by_name[name]
                r = f"{p}w{len(inits)}"
                ref[name] = r
                dims = tuple(int(d) for d in t.dims)
                ty = f"{dtype_short(t.data_type)}[{','.join(map(str, dims))}]"
                inits.append(CInit(r, ty, t.data_type, dims, t.name, t, self.base_dir))
            return r

        unknown: dict[str, str] = {}

        def resolve(name: str) -> str:
            if not name:
                return "_"
            r = ref.get(name)
            if r is not None:
                return r
            if name in init_by_name:
                return init_ref(name)
            if self.outer is not None:
                ph = self.outer.get(name)
                if ph is None:
                    ph = f"%^{len(self.outer_refs)}"
                    self.outer[name] = ph
                    self.outer_refs[ph] = name
                return ph
            r = unknown.get(name)
            if r is None:
                r = f"{p}undef{len(unknown)}"
                unknown[name] = r
                if not any("undefined" in n for n in notes):
                    notes.append("some node inputs are produced by nothing (undefined values)")
            return r

        cnodes: list[CNode] = []
        for k, i in enumerate(order):
            nd = nodes[i]
            ins = [resolve(x) for x in nd.input]
            in_types = [self.vtype(x) if x else "" for x in nd.input]
            outs = [ref[o] if o else "_" for o in nd.output]
            out_types = [self.vtype(o) if o else "" for o in nd.output]
            body: list[str] = []
            attrs = dict(attrs_of(i))
            imp = [resolve(x) for x in implicit[i]]
            for a in nd.attribute:
                graphs = _attr_graphs(a)
                if graphs:
                    texts = []
                    for gi, sg in enumerate(graphs):
                        lines, outer_map = self.subgraph_lines(sg, resolve)
                        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:_HASH_CHARS]
                        texts.append(f"graph#{digest}")
                        tag = a.name if len(graphs) == 1 else f"{a.name}[{gi}]"
                        body.append(f"{tag}:")
                        body.extend(f"  {ln}" for ln in outer_map + lines)
                    attrs[a.name] = texts[0] if a.type == 5 else "[" + ",".join(texts) + "]"
            cnodes.append(CNode(k, _op_name(nd), ins, in_types, outs, out_types, attrs,
                                nd.name or None, body, imp))
        for name in init_names:  # initializers nobody reads keep a ref too
            if name not in ref:
                init_ref(name)
        outputs = [CValue(f"{p}out{k}", o.name, self.vtype(o.name), resolve(o.name)) for k, o in enumerate(g.output)]
        return inputs, outputs, inits, cnodes, notes

    def render_attrs(self, nd: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for a in sorted(nd.attribute, key=lambda a: a.name):
            if a.type in (5, 10):
                out[a.name] = "graph"  # replaced by the subgraph digest later
                continue
            out[a.name] = self.render_attr(a)
        return out

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
        types = dict(self.types)
        for vi in list(sg.value_info) + list(sg.input) + list(sg.output):
            if vi.HasField("type"):
                types[vi.name] = vi.type
        for t in sg.initializer:
            import onnx

            tp = onnx.TypeProto()
            tp.tensor_type.elem_type = t.data_type
            tp.tensor_type.shape.SetInParent()
            for d in t.dims:
                tp.tensor_type.shape.dim.add().dim_value = d
            types[t.name] = tp
        sub = _Canonicalizer(sg, types, self.keep, self.base_dir, prefix="%", outer={})
        ins, outs, inits, nodes, _ = sub.run()
        tmp = CanonGraph("onnx", None, None, {}, {}, ins, outs, inits, nodes)
        lines = render_body(tmp, io_names=False)
        outer_map = [f"outer {ph} = {outer_resolve(name)}" for ph, name in sub.outer_refs.items()]
        return lines, outer_map


def canonicalize(model: Any, *, base_dir: str | None = None, path: str | None = None) -> CanonGraph:
    """The canonical view of a ModelProto (weights are only touched when a hash is asked for)."""
    types, err = infer_value_types(model)
    keep = interface_params(model.graph)
    c = _Canonicalizer(model.graph, types, keep, base_dir)
    inputs, outputs, inits, nodes, notes = c.run()
    if err:
        notes.insert(0, err)
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


def render_snapshot(g: CanonGraph, *, io_names: bool = True, metadata: bool = True) -> str:
    lines = [SNAPSHOT_MAGIC, f"ir_version: {g.ir_version}",
             "opsets: " + " ".join(f"{d}={v}" for d, v in g.opsets.items())]
    if metadata:
        lines.append("metadata:")
        for k, v in g.metadata.items():
            lines.append(f"  {json.dumps(k)}: {json.dumps(v)}")
    lines.extend(render_body(g, io_names=io_names))
    return "\n".join(lines) + "\n"


def split_top(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    out, depth, start, i, q = [], 0, 0, 0, False
    n, ls = len(s), len(sep)
    while i < n:
        c = s[i]
        if q:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                q = False
        elif c == '"':
            q = True
        elif c in "[(<{":
            depth += 1
        elif c in "])>}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            out.append(s[start:i])
            i += ls
            start = i
            continue
        i += 1
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
    # find the matching ')'
    depth, q, i = 0, False, k
    while i < len(rest):
        c = rest[i]
        if q:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                q = False
        elif c == '"':
            q = True
        elif c in "[(<{":
            depth += 1
        elif c in "])>}":
            depth -= 1
            if depth == 0:
                break
        i += 1
    if depth != 0:
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
