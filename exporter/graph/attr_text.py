"""Attribute values as snapshot text reads them: ints and floats as float32 prints them, strings as
JSON, small tensors by value and others by content hash, types as value types render; a node's
attributes sorted by name, rendered once per distinct attribute set (most nodes share a few)."""

from __future__ import annotations

import json
from typing import Any

from exporter.graph.dtypes import f32_text
from exporter.graph.tensors import render_tensor_attr
from exporter.graph.value_types import render_type

_GRAPH_MARK = "\0graph"  # key marking rendered attributes that still hold subgraphs
_NO_ATTRS: dict[str, str] = {}  # shared by every node without attributes: never mutated


class AttrTexts:
    """Rendered attribute sets, cached by their serialized bytes."""

    def __init__(self, base_dir: str | None, keep: frozenset[str]) -> None:
        self.base_dir = base_dir
        self.keep = keep
        self._cache: dict[bytes, dict[str, str]] = {}

    def render(self, node: Any, key: bytes = b"") -> dict[str, str]:
        """Rendered attributes of a NodeProto, sorted by name (cached by ``key``, the serialized
        attributes, made here when empty: most nodes share a few attribute sets). Subgraphs get a
        ``_GRAPH_MARK`` key, replaced later by digests."""
        if not key:
            attrs = node.attribute
            if not attrs:
                return _NO_ATTRS
            key = b"".join([a.SerializeToString() for a in attrs])
        out = self._cache.get(key)
        if out is None:
            attrs = node.attribute
            out = {}
            has_graph = False
            for a in sorted(attrs, key=lambda a: a.name):
                if a.type in (5, 10):
                    has_graph = True
                    out[a.name] = "graph"
                else:
                    out[a.name] = render_attr(a, self.base_dir, self.keep)
            if has_graph:
                out[_GRAPH_MARK] = ""
            else:
                self._cache[key] = out
        return out


def render_attr(a: Any, base_dir: str | None, keep: frozenset[str]) -> str:
    """The text of one attribute (its value; small tensors by value, others by content hash)."""
    if a.ref_attr_name:
        return "@" + a.ref_attr_name
    t = a.type
    if t == 2:
        return str(a.i)
    if t == 1:
        return f32_text(a.f)
    if t == 3:
        return json.dumps(a.s.decode("utf-8", "backslashreplace"))
    if t == 7:
        return "[" + ",".join(str(v) for v in a.ints) + "]"
    if t == 6:
        return "[" + ",".join(f32_text(v) for v in a.floats) + "]"
    if t == 8:
        return json.dumps([s.decode("utf-8", "backslashreplace") for s in a.strings], separators=(",", ":"))
    if t == 4:
        return render_tensor_attr(a.t, base_dir)
    if t == 9:
        return "[" + ",".join(render_tensor_attr(x, base_dir) for x in a.tensors) + "]"
    if t == 11:
        return "sparse" + render_tensor_attr(a.sparse_tensor.values, base_dir)
    if t == 13:
        return render_type(a.tp, keep)
    if t == 14:
        return "[" + ",".join(render_type(x, keep) for x in a.type_protos) + "]"
    return "?"
