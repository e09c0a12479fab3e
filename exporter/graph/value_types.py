"""Types of the values of an ONNX graph, as snapshot text reads them (``f32[1,3,640,640]``) and as
shape lists (for FLOPs): initializers from their dims, everything else from the types the file
declares, completed by ONNX shape inference where the file leaves a node output untyped.

Types are rendered once per distinct type, keyed by their serialized bytes, so a graph of 50k
values with a few dozen distinct types renders a few dozen. Never imports torch; onnx is imported
inside the functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from exporter.graph.dtypes import dtype_short

_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# initializers up to this size keep their data for shape inference (Reshape targets, ...)
_INFER_KEEP_BYTES = 64 * 1024


def _safe_dim_name(name: str) -> str:
    return name if _NAME_OK.match(name) else re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "?"


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


class _Type:
    """One distinct declared type: its text, whether it is complete (a tensor type with a shape, or
    no tensor at all) and the proto, for shapes."""

    __slots__ = ("text", "complete", "which", "proto", "_shape", "_has_shape")

    def __init__(self, tp: Any, keep: frozenset[str]) -> None:
        self.which = which = tp.WhichOneof("value")
        self.text = render_type(tp, keep)
        self.complete = which != "tensor_type" or tp.tensor_type.HasField("shape")
        self.proto = tp
        self._shape: list | None = None
        self._has_shape = False

    def shape(self) -> list | None:
        if not self._has_shape:
            self._shape, self._has_shape = shape_list(self.proto), True
        return self._shape


def _type_key(vi: Any) -> bytes:
    """The serialized ValueInfoProto without its name (field 1, serialized first): equal keys, equal
    types. Serializing the whole message and cutting is cheaper than reaching ``vi.type``."""
    s = vi.SerializeToString()
    if s[:1] != b"\n":
        return s
    n, pos, shift = 0, 1, 0
    while True:
        b = s[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return s[pos + n:]
        shift += 7


class _Texts(dict):
    """name -> type text; ``"?"`` for a name of unknown type."""

    def __missing__(self, name: str) -> str:
        return "?"


class ValueTypes:
    """Types of a graph's values: initializers from their dims, everything else from the types the
    file declares and ONNX shape inference found; ``text`` maps each known name to its rendering."""

    def __init__(self, keep_params: frozenset[str], error: str | None = None) -> None:
        self.keep = keep_params
        self.error = error
        self.inits: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.declared: dict[str, _Type] = {}  # value_info, typed graph inputs and outputs, inferred types
        self.text: dict[str, str] = _Texts()
        self._by_key: dict[bytes, _Type] = {}
        self._init_text: dict[tuple[int, tuple[int, ...]], str] = {}

    # -- building ------------------------------------------------------------------------------
    def declare(self, vis: Iterable[Any], *, typed_only: bool = False) -> None:
        """Take the types of ``vis`` (ValueInfoProtos); ``typed_only`` skips those without a type."""
        by_key, declared, keep = self._by_key, self.declared, self.keep
        for vi in vis:
            key = vi.SerializeToString()  # _type_key, inline: the name (field 1) cut off
            if key[:1] == b"\n":
                n = key[1]
                key = key[2 + n:] if n < 0x80 else _type_key(vi)
            t = by_key.get(key)
            if t is None:
                t = by_key[key] = _Type(vi.type, keep)
            if typed_only and t.which is None:
                continue
            declared[vi.name] = t

    def add_inits(self, tensors: Iterable[Any]) -> None:
        inits = self.inits
        for t in tensors:
            inits[t.name] = (t.data_type, tuple(t.dims))

    def finish(self) -> ValueTypes:
        """Build :attr:`text` (initializers win over declared types)."""
        text = _Texts({name: t.text for name, t in self.declared.items()})
        cache = self._init_text
        for name, it in self.inits.items():
            s = cache.get(it)
            if s is None:
                s = cache[it] = f"{dtype_short(it[0])}[{','.join(map(str, it[1]))}]"
            text[name] = s
        self.text = text
        return self

    def type_text(self, name: str) -> str:
        """The text of one value's type, with or without :meth:`finish`."""
        it = self.inits.get(name)
        if it is not None:
            s = self._init_text.get(it)
            if s is None:
                s = self._init_text[it] = f"{dtype_short(it[0])}[{','.join(map(str, it[1]))}]"
            return s
        t = self.declared.get(name)
        return "?" if t is None else t.text

    def complete(self, names: Iterable[str]) -> bool:
        """Every one of ``names`` has a declared type, and a shape where it is a tensor."""
        declared = self.declared
        for name in names:
            t = declared.get(name)
            if t is None or not t.complete:
                return False
        return True

    # -- reading -------------------------------------------------------------------------------
    def render(self, name: str) -> str:
        return self.text.get(name, "?")

    def shape(self, name: str) -> list | None:
        """Shape as a list (ints, symbol names, None for unknown dims); None when unknown."""
        it = self.inits.get(name)
        if it is not None:
            return list(it[1])
        t = self.declared.get(name)
        return None if t is None else t.shape()

    def with_graph(self, graph: Any) -> ValueTypes:
        """A copy that also knows a subgraph's declared values and initializers."""
        sub = ValueTypes(self.keep)
        sub._by_key = self._by_key
        sub._init_text = self._init_text
        sub.declared = dict(self.declared)
        sub.declare(vi for vi in (*graph.value_info, *graph.input, *graph.output) if vi.HasField("type"))
        sub.inits = dict(self.inits)
        sub.add_inits(graph.initializer)
        return sub.finish()


def _light_model(model: Any) -> Any:
    """``model`` for shape inference: initializers over 64 KiB carry their dims only."""
    import onnx
    from onnx import TensorProto

    g = model.graph
    big = [t for t in g.initializer if t.ByteSize() > _INFER_KEEP_BYTES]
    if not big:
        return model
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
    return light


def infer_value_types(model: Any, node_outputs: Iterable[Sequence[str]] | None = None,
                      inits: dict[str, tuple[int, tuple[int, ...]]] | None = None, *,
                      texts: bool = True) -> ValueTypes:
    """Types of every value of the main graph that the file or shape inference knows.

    A file that already declares the type of every node output (as ``yexport export`` writes
    them) is taken as it is: inference could add nothing. Otherwise ONNX shape inference runs, on a
    light copy of the model whose large initializers carry dims only, so the weights are neither
    copied nor read; if it fails, the declared types remain and ``error`` says why. ``node_outputs``
    (the output names of each node) and ``inits`` (name -> (elem_type, dims) of the initializers,
    sparse ones with their dense dims) save reading them from the graph again. Without ``texts``
    the name -> text map is left empty (:meth:`ValueTypes.type_text` still answers)."""
    g = model.graph
    types = ValueTypes(interface_params(g))
    if inits is not None:
        types.inits = inits
    else:
        types.add_inits(g.initializer)
        for st in g.sparse_initializer:  # the dense shape, from the sparse tensor
            types.inits.setdefault(st.values.name, (st.values.data_type, tuple(st.dims)))
    types.declare(g.value_info)
    types.declare(g.input, typed_only=True)
    types.declare(g.output, typed_only=True)
    if node_outputs is None:
        node_outputs = [n.output for n in g.node]
    if types.complete(o for outs in node_outputs for o in outs if o):
        return types.finish() if texts else types
    import onnx  # shape inference only: onnx's whole package (numpy, ml_dtypes) is slow to import

    try:
        inferred = onnx.shape_inference.infer_shapes(_light_model(model), check_type=False, strict_mode=False,
                                                     data_prop=False)
    except Exception as exc:  # noqa: BLE001 - inference is best effort; declared types remain
        msg = str(exc).strip()
        types.error = f"shape inference failed: {msg.splitlines()[0] if msg else type(exc).__name__}"
        return types.finish() if texts else types
    ig = inferred.graph
    types.declare(ig.value_info)
    types.declare(ig.output, typed_only=True)
    return types.finish() if texts else types
