"""Canonical, name-free view of an ONNX graph: the common ground of ``snapshot`` and ``diff``.

A :class:`CanonGraph` lists the nodes in a canonical topological order and names every value by
position (``%in0`` graph inputs, ``%w3`` initializers, ``%12`` / ``%12.1`` outputs of node 12), so
two files that differ only in node or value names, or in the order of their node list, give the
same canonical graph. The order is depth-first over the dataflow: after a node, the consumers it
made ready come next, so a chain stays together and a node inserted into a chain (BatchNorm after
a Conv) shifts nothing else. Ties between nodes made ready together are broken by structure (the
output they consume, op, attributes, shapes) and last by their position in the file. Nodes that
depend only on constants (``Constant``, shape arithmetic on initializers; see
:mod:`exporter.graph.constants`) are placed right before their first consumer.

Every field of the ONNX graph is read once, into plain lists: protobuf field access is what costs
on a graph of tens of thousands of nodes. The pieces live in their own modules (re-exported here):
element types in :mod:`~exporter.graph.dtypes`, value types and shape inference in
:mod:`~exporter.graph.value_types`, tensor hashes in :mod:`~exporter.graph.tensors`, the data model
in :mod:`~exporter.graph.canon_graph`, the text format in :mod:`~exporter.graph.snapshot_text`.

Never imports torch; onnx is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from typing import Any

from exporter.graph.attr_text import _GRAPH_MARK, _NO_ATTRS, AttrTexts
from exporter.graph.canon_graph import CanonGraph, CInit, CNode, CValue
from exporter.graph.canon_order import canonical_order
from exporter.graph.constants import attr_graphs, constant_nodes, graph_free_names
from exporter.graph.dtypes import (  # noqa: F401 - re-exported: load.py, inspect and others import them here
    _DTYPE_BITS,
    _DTYPE_SHORT,
    dtype_bytes,
    dtype_long,
    dtype_short,
    f32_text,
    numel,
)
from exporter.graph.snapshot_text import (  # noqa: F401 - re-exported
    SNAPSHOT_MAGIC,
    parse_node_line,
    parse_snapshot,
    render_body,
    render_node,
    render_snapshot,
    split_top,
)
from exporter.graph.sources import load_any, no_gc  # noqa: F401 - re-exported
from exporter.graph.tensors import (  # noqa: F401
    _HASH_CHARS,
    _tensor_chunks,
    _tensor_digest,
    render_tensor_attr,
    strip_hashes,  # noqa: F401 - re-exported
)
from exporter.graph.value_types import (  # noqa: F401 - re-exported
    ValueTypes,
    infer_value_types,
    interface_params,
    render_type,
    shape_list,
)

_GONE: list[str] = []


class _Canonicalizer:
    """Puts one graph (the main graph, or a subgraph with ``outer`` placeholders) in canonical form.
    ``types`` may be left out for the main graph: :meth:`run` then infers them (``model``)."""

    def __init__(self, graph: Any, types: ValueTypes | None, base_dir: str | None,
                 outer: dict[str, str] | None = None, model: Any = None, scan: Any = None) -> None:
        self.g = graph
        self.scan = scan  # what the loader read of the main graph (exporter.graph.load.Scan), or None
        self.types = types
        self.model = model
        self.keep = types.keep if types is not None else interface_params(graph)
        self.base_dir = base_dir
        self.outer = outer  # name -> placeholder, filled on first use (subgraphs only)
        self.outer_refs: dict[str, str] = {}  # placeholder -> outer name
        self._attrs = AttrTexts(base_dir, self.keep)
        self.order: list[int] = []  # after run(): file positions in canonical order

    def run(self, text: bool = False) -> tuple[list[CValue], list[CValue], list[CInit], list[CNode] | list[str],
                                               list[str]]:
        """(inputs, outputs, initializers, nodes, notes); with ``text`` the nodes come as their snapshot
        lines (exactly what :func:`render_body` makes of the nodes), without building them."""
        g = self.g
        # -- every node field, read once ---------------------------------------------------------
        nodes = list(g.node)
        # one comprehension per field: the loop that appends to five lists costs a third more
        n_in: list[list[str]] = [nd.input[:] for nd in nodes]
        n_out: list[list[str]] = [nd.output[:] for nd in nodes]
        intern = sys.intern  # a few distinct op types: one string each
        n_op: list[str] = [intern(nd.op_type) for nd in nodes]
        domains = [nd.domain for nd in nodes]
        if any(domains):
            n_op = [op if not d or d == "ai.onnx" else f"{d}.{op}" for op, d in zip(n_op, domains, strict=True)]
        n_name: list[str] = [] if text else [nd.name for nd in nodes]  # names are not part of a snapshot
        n_attrs: list[dict[str, str]] = []
        with_graphs: list[int] = []
        render_attrs = self._attrs.render
        scan = self.scan
        keys = scan.attr_keys if scan is not None else [b""] * len(nodes)  # b"": serialize here
        for nd, key in zip(nodes, keys, strict=True):
            if key is None:  # no attributes (known from the scan)
                n_attrs.append(_NO_ATTRS)
                continue
            rendered = render_attrs(nd, key)
            if rendered is not _NO_ATTRS and _GRAPH_MARK in rendered:
                with_graphs.append(len(n_attrs))
            n_attrs.append(rendered)
        n_nodes = len(nodes)

        # initializers (sparse ones by their values tensor), once
        init_by_name: dict[str, Any]
        init_names: list[str]
        init_meta: dict[str, tuple[int, tuple[int, ...]]]
        if scan is not None:  # read by the loader's check already
            init_names = scan.init_names
            init_by_name = dict(zip(init_names, scan.init_tensors, strict=True))
            init_meta = dict(zip(init_names, scan.init_meta, strict=True))
        else:
            init_names, init_by_name, init_meta = [], {}, {}
            for t in g.initializer:
                name = t.name
                init_names.append(name)
                init_by_name[name] = t
                init_meta[name] = (t.data_type, tuple(t.dims))
        for st in g.sparse_initializer:
            t = st.values
            name = t.name
            init_names.append(name)
            init_by_name[name] = t
            init_meta.setdefault(name, (t.data_type, tuple(st.dims)))
        if self.types is None:
            self.types = infer_value_types(self.model, node_outputs=n_out, inits=init_meta)
        tget = self.types.text.get
        init_types = self.types.inits
        graph_inputs = [vi for vi in g.input if vi.name not in init_by_name]
        gin_pos = {vi.name: k for k, vi in enumerate(graph_inputs)}

        # -- producers, consumers and what each node reads --------------------------------------
        deps: list[list[str]] = []  # what each node reads (no empty names), plus implicit reads below
        producer: dict[str, int] = {}
        consumers: dict[str, list[int]] = {}
        cget = consumers.get
        for i in range(n_nodes):
            ins = n_in[i]
            if "" in ins:
                ins = [x for x in ins if x]
            deps.append(ins)
            for x in ins:
                lst = cget(x)
                if lst is None:
                    consumers[x] = [i]
                else:
                    lst.append(i)
            outs = n_out[i]
            if len(outs) == 1:
                if outs[0]:
                    producer[outs[0]] = i
            else:
                for o in outs:
                    if o:
                        producer[o] = i

        # If/Loop/Scan also read the outer values their bodies use
        implicit: dict[int, list[str]] = {}
        for i in with_graphs:
            extra = []
            for a in nodes[i].attribute:
                for sg in attr_graphs(a):
                    extra.extend(sorted(graph_free_names(sg)))
            implicit[i] = list(dict.fromkeys(extra))
            deps[i] = deps[i] + implicit[i]
            for x in implicit[i]:
                consumers.setdefault(x, []).append(i)

        # constant-derived nodes (placed before their first consumer), on everything each node reads
        is_const, const_values = constant_nodes(n_op, deps, n_out, init_by_name, type_reads=True, exact=True)

        order, notes = canonical_order(n_op, n_attrs, n_out, deps, producer, consumers, is_const, const_values,
                                       gin_pos, [o.name for o in g.output], tget)
        # the dataflow maps have served: let them go before the refs and nodes are built (the peak)
        del deps, producer, consumers, cget, is_const, const_values, init_meta
        self.order = order
        # -- canonical refs -------------------------------------------------------------------------
        ref: dict[str, str] = {}
        inputs: list[CValue] = []
        for k, vi in enumerate(graph_inputs):
            name = vi.name
            ref[name] = f"%in{k}"
            inputs.append(CValue(f"%in{k}", name, tget(name, "?")))
        for k, i in enumerate(order):
            outs = n_out[i]
            if outs:
                if outs[0]:
                    ref[outs[0]] = f"%{k}"
                for j in range(1, len(outs)):
                    if outs[j]:
                        ref[outs[j]] = f"%{k}.{j}"
        ref.pop("", None)  # an unnamed graph input: "" is an omitted value, never a ref
        inits: list[CInit] = []
        base_dir = self.base_dir
        outer = self.outer
        n_undef = 0

        def resolve(name: str) -> str:
            """The ref of a value read: initializers, outer values (subgraphs) and undefined ones get
            theirs on first use, in canonical order."""
            nonlocal n_undef
            if not name:
                return "_"
            r = ref.get(name)
            if r is not None:
                return r
            t = init_by_name.get(name)
            if t is not None:
                r = f"%w{len(inits)}"
                et, dims = init_types.get(name) or (t.data_type, tuple(t.dims))
                inits.append(CInit(r, tget(name, "?"), et, dims, name, t, base_dir))
            elif outer is not None:
                r = outer.get(name)
                if r is None:
                    r = outer[name] = f"%^{len(self.outer_refs)}"
                    self.outer_refs[r] = name
            else:
                r = f"%undef{n_undef}"
                n_undef += 1
                if not any("undefined" in n for n in notes):
                    notes.append("some node inputs are produced by nothing (undefined values)")
            ref[name] = r
            return r

        # every value read gets its ref, in canonical order (subgraph bodies first, then the outer
        # values they read, then the inputs, node after node)
        sub: dict[int, tuple[dict[str, str], list[str], list[str]]] = {}
        if implicit:
            for i in order:
                if i in implicit:
                    attrs, body = self.subgraph_attrs(nodes[i], n_attrs[i], resolve)
                    sub[i] = (attrs, body, [resolve(x) for x in implicit[i]])
                for x in n_in[i]:
                    if x not in ref:
                        resolve(x)
        else:  # the same, in bulk: every name read, once, in order of first use
            for x in [x for x in dict.fromkeys([x for i in order for x in n_in[i]]) if x not in ref]:
                resolve(x)
        for name in init_names:  # initializers nobody reads keep a ref too
            if name not in ref:
                resolve(name)
        outputs = [CValue(f"%out{k}", o.name, tget(o.name, "?"), resolve(o.name)) for k, o in enumerate(g.output)]

        # "" is an omitted value: ref "_", type "" (set for the lookups below, then taken out again)
        types_text = self.types.text
        saved = types_text.pop("", None)
        types_text[""] = ""
        ref[""] = "_"
        try:
            if text:
                lines = self._node_lines(order, n_in, n_out, n_op, n_attrs, sub, ref, types_text)
                return inputs, outputs, inits, lines, notes
            tg = types_text.__getitem__  # "?" for a value of unknown type (_Texts.__missing__)
            rg = ref.__getitem__
            # nodes with the same input (output) types share one list: a graph repeats few type patterns,
            # and a list per node would be a fifth of the canonical graph's memory (never mutated)
            shared: dict[tuple[str, ...], list[str]] = {}
            sget = shared.get
            cnodes: list[CNode] = []
            append = cnodes.append
            for k, i in enumerate(order):
                ins = n_in[i]
                outs = n_out[i]
                n_in[i] = n_out[i] = _GONE  # read for the last time: let go as the nodes are built (the peak)
                ti = tuple(map(tg, ins))
                li = sget(ti)
                if li is None:
                    li = shared[ti] = list(ti)
                to = tuple(map(tg, outs))
                lo = sget(to)
                if lo is None:
                    lo = shared[to] = list(to)
                if sub and i in sub:
                    attrs, body, imp = sub[i]
                    append(CNode(k, n_op[i], list(map(rg, ins)), li, list(map(rg, outs)), lo, attrs,
                                 n_name[i] or None, body, imp))
                else:
                    append(CNode(k, n_op[i], list(map(rg, ins)), li, list(map(rg, outs)), lo, n_attrs[i],
                                 n_name[i] or None))
            return inputs, outputs, inits, cnodes, notes
        finally:
            del types_text[""]
            if saved is not None:
                types_text[""] = saved
            del ref[""]

    def _node_lines(self, order: list[int], n_in: list[list[str]], n_out: list[list[str]], n_op: list[str],
                    n_attrs: list[dict[str, str]], sub: dict[int, tuple[dict[str, str], list[str], list[str]]],
                    ref: dict[str, str], types_text: dict[str, str]) -> list[str]:
        """The ``nodes:`` lines of the snapshot, made from the refs directly (the same text as
        :func:`render_body` of the nodes; each value's ``ref: type`` is formatted once). ``ref``
        holds every value read, and ``""`` (an omitted value) as ``_``."""
        tg = types_text.__getitem__
        vt = {name: f"{r}: {tg(name)}" for name, r in ref.items()}  # name -> "ref: type"
        vt[""] = "_"
        vg = vt.__getitem__
        lines: list[str] = []
        append = lines.append
        attr_text: dict[int, str] = {}
        for i in order:
            attrs = n_attrs[i]
            body: list[str] | tuple[str, ...] = ()
            if sub and i in sub:  # attributes with subgraph digests: a dict of its own, rendered once
                attrs, body, _ = sub[i]
                a = "  " + "  ".join([f"{k}={v}" for k, v in attrs.items()]) if attrs else ""
            elif attrs:  # shared between nodes and alive throughout: cached by identity
                cached = attr_text.get(id(attrs))
                if cached is None:
                    cached = attr_text[id(attrs)] = "  " + "  ".join([f"{k}={v}" for k, v in attrs.items()])
                a = cached
            else:
                a = ""
            outs = n_out[i]
            ins = n_in[i]
            append(f"  {', '.join(map(vg, outs)) or '()'} = {n_op[i]}({', '.join(map(vg, ins))}){a}")
            if body:
                lines.extend(f"    | {b}" for b in body)
        return lines

    def subgraph_attrs(self, nd: Any, attrs: dict[str, str],
                       outer_resolve: Callable[[str], str]) -> tuple[dict[str, str], list[str]]:
        attrs = {k: v for k, v in attrs.items() if k != _GRAPH_MARK}
        body: list[str] = []
        for a in nd.attribute:
            graphs = attr_graphs(a)
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

    def subgraph_lines(self, sg: Any, outer_resolve: Callable[[str], str]) -> tuple[list[str], list[str]]:
        assert self.types is not None
        sub = _Canonicalizer(sg, self.types.with_graph(sg), self.base_dir, outer={})
        ins, outs, inits, nodes, _ = sub.run()
        lines = render_body(CanonGraph("onnx", None, None, {}, {}, ins, outs, inits, nodes),  # type: ignore[arg-type]
                            io_names=False)
        outer_map = [f"outer {ph} = {outer_resolve(name)}" for ph, name in sub.outer_refs.items()]
        return lines, outer_map


def canonicalize(model: Any, *, base_dir: str | None = None, path: str | None = None,
                 text: bool = False, scan: Any = None) -> CanonGraph:
    """The canonical view of a ModelProto (weights are only touched when a hash is asked for).

    ``text`` is for the snapshot: the nodes come as their snapshot lines (``node_lines``) and
    ``nodes`` stays empty. ``scan`` is what the loader read of this very model
    (:func:`exporter.graph.load.load_scanned`), not read again."""
    with no_gc():
        c = _Canonicalizer(model.graph, None, base_dir, model=model, scan=scan)
        inputs, outputs, inits, nodes, notes = c.run(text=text)
    assert c.types is not None
    if c.types.error:
        notes.insert(0, c.types.error)
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain or "ai.onnx"] = int(o.version)
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x) or None
    meta = {p.key: p.value for p in model.metadata_props}
    if text:
        return CanonGraph("onnx", path, int(model.ir_version), dict(sorted(opsets.items())),
                          dict(sorted(meta.items())), inputs, outputs, inits, [], producer, notes,
                          node_lines=nodes, order=c.order)  # type: ignore[arg-type]
    return CanonGraph("onnx", path, int(model.ir_version), dict(sorted(opsets.items())), dict(sorted(meta.items())),
                      inputs, outputs, inits, nodes, producer, notes, order=c.order)  # type: ignore[arg-type]
