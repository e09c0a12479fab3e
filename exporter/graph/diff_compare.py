"""What ``yexport diff`` compares once the nodes are matched: each matched pair (op, attributes,
data-input types and sources, output types, constant inputs slot by slot), the initializers, the
graph interface, the opsets and metadata. The per-graph lookups (:class:`Side`) are built once per
graph and shared with the matching (:mod:`exporter.graph.match`) and the summary.

A pair whose signatures are equal (op, attributes, data-input and output types) is checked only for
what the signature leaves out: where its data inputs come from, and its constant inputs."""

from __future__ import annotations

import functools
import json
from collections import Counter
from typing import Any

from exporter.graph.canon_graph import CanonGraph, CNode, CValue
from exporter.graph.constants import constant_nodes
from exporter.graph.diff_report import DiffResult, _v
from exporter.graph.tensors import CInit, strip_hashes


@functools.lru_cache(maxsize=4096)
def slot_name(op: str, slot: int, opset: int | None) -> str:
    """``input 2 (B)`` using the operator schema where onnx knows it."""
    try:
        import onnx.defs

        domain, _, name = op.rpartition(".")
        schema = onnx.defs.get_schema(name, opset or 1000, domain or "")
        formal = schema.inputs
        if slot < len(formal):
            return f"input {slot} ({formal[slot].name})"
        if formal and formal[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            return f"input {slot} ({formal[-1].name})"
    except Exception:  # noqa: BLE001 - custom ops, unknown opsets
        pass
    return f"input {slot}"


class Side:
    """Per-graph lookups used by the diff: initializers and producers by ref, graph input positions,
    the constant values (:mod:`exporter.graph.constants`, each node's reads as everything it reads),
    Identity aliases of initializers, per node its data inputs (the inputs that are neither
    constant nor omitted) with their types, and ``used``: what the nodes with a constant input and the
    graph outputs read (every initializer that is read is among them)."""

    def __init__(self, g: CanonGraph, tag: str) -> None:
        self.g = g
        self.tag = tag
        self.inits = g.init_by_ref()
        self.first, self.other = g.producers()  # ref -> node (first outputs), ref -> (node, slot)
        self.gin = {v.ref: k for k, v in enumerate(g.inputs)}
        nodes = self.nodes = g.nodes
        self.scopes_ok: dict[int, bool] = {}  # _scopes_usable per other side, computed once
        # values computed from constants alone (Constant nodes, Identity of an initializer, ...);
        # "_" (omitted) counts as constant while the data inputs are sorted out
        flags, const = constant_nodes(
            [n.op for n in nodes], [n.inputs if not n.implicit else [*n.inputs, *n.implicit] for n in nodes],
            [n.outputs for n in nodes], [*self.inits, "_"], type_reads=True, omitted="", exact=True)
        self.const = const
        self.alias: dict[str, str] = {}  # Identity output -> the initializer it forwards
        for n, flag in zip(nodes, flags, strict=True):
            if flag and n.op == "Identity" and n.inputs and n.outputs:
                src = self.alias.get(n.inputs[0], n.inputs[0])
                if src in self.inits:
                    self.alias[n.outputs[0]] = src
        # per node: the slots of the inputs that are neither constant nor omitted (None: all of them),
        # and the types of those data inputs
        self.slots: list[tuple[int, ...] | None] = []
        self.data_types: list[tuple[str, ...]] = []
        slots, data_types = self.slots, self.data_types
        disjoint = const.isdisjoint
        same: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per type pattern (a graph has few)
        shared = same.setdefault
        slot_patterns: dict[tuple[int, ...], tuple[int, ...]] = {}
        shared_slots = slot_patterns.setdefault
        # the canonicalizer shares input-type lists between nodes: one tuple per list (the nodes hold
        # the lists, so their ids stay distinct meanwhile)
        by_list: dict[int, tuple[str, ...]] = {}
        used: set[str] = set()  # every value read by a node with a constant input: the initializers read
        for n in nodes:
            ins = n.inputs
            if disjoint(ins):  # every input is data (the common case)
                slots.append(None)
                tys = n.input_types
                t = by_list.get(id(tys))
                if t is None:
                    t = tuple(tys)
                    t = by_list[id(tys)] = shared(t, t)
                data_types.append(t)
            else:  # the slot and type tuples are shared too: a Conv's (0,) and its input type, once
                used.update(ins)
                sl = tuple([k for k, r in enumerate(ins) if r not in const])
                tys = n.input_types
                slots.append(shared_slots(sl, sl))
                t = tuple([tys[k] for k in sl])
                data_types.append(shared(t, t))
        const.discard("_")
        used.update([v.source for v in g.outputs if v.source is not None])
        self.used = used

    def data(self, idx: int) -> list[tuple[int, str, str]]:
        """(slot, ref, type) of the data inputs of node ``idx``."""
        n = self.nodes[idx]
        sl = self.slots[idx]
        if sl is None:
            return list(zip(range(len(n.inputs)), n.inputs, n.input_types, strict=True))
        return [(k, n.inputs[k], n.input_types[k]) for k in sl]

    def data_refs(self, idx: int) -> list[str]:
        sl = self.slots[idx]
        ins = self.nodes[idx].inputs
        return ins if sl is None else [ins[k] for k in sl]

    def init_of(self, ref: str) -> str | None:
        """The initializer a value is (directly or through Identity nodes), else None."""
        if ref in self.inits:
            return ref
        return self.alias.get(ref)

    def data_inputs(self, n: CNode) -> list[tuple[int, str, str]]:
        return self.data(n.index)

    def producer(self, ref: str) -> tuple[int, int] | None:
        """(node index, output slot) of the node that makes ``ref``; None for anything else."""
        idx = self.first.get(ref)
        return (idx, 0) if idx is not None else self.other.get(ref)

    def source(self, ref: str, match: dict[int, int] | None) -> tuple:
        """Where a value comes from, in B's numbering: ('node', b_index, slot), ('in', k),
        ('init',), ('none',) or ('new', ...) when it comes from a node with no counterpart.
        Nodes without counterpart are looked through along their first data input."""
        for _ in range(10_000):
            if ref == "_":
                return ("none",)
            if ref in self.gin:
                return ("in", self.gin[ref])
            if ref in self.const:
                return ("const",)
            pr = self.producer(ref)
            if pr is None:
                return ("other", ref)
            idx, slot = pr
            if match is None:
                return ("node", idx, slot)
            if idx in match:
                return ("node", match[idx], slot)
            if not self.data_types[idx]:
                return ("new", self.tag, idx)
            ref = self.data_refs(idx)[0]
        return ("other", ref)

    def describe(self, src: tuple) -> str:
        if src[0] == "node":
            nodes = self.nodes
            return f"%{src[1]}{'' if src[2] == 0 else f'.{src[2]}'} {nodes[src[1]].op}"
        if src[0] == "in":
            return f"%in{src[1]}"
        return src[0]


def orig(side: Side, ref: str) -> str:
    return side.describe(side.source(ref, None))


def compare_model(ga: CanonGraph, gb: CanonGraph, res: DiffResult, with_metadata: bool,
                  run_metadata: bool = False) -> None:
    from exporter.identity import graph_identity

    if ga.ir_version is not None and gb.ir_version is not None and ga.ir_version != gb.ir_version:
        res.model.append({"field": "ir_version", "a": ga.ir_version, "b": gb.ir_version})
    for dom in sorted(set(ga.opsets) | set(gb.opsets)):
        oa, ob = ga.opsets.get(dom), gb.opsets.get(dom)
        if oa != ob:
            res.model.append({"field": f"opset {dom}", "a": oa, "b": ob})
    if with_metadata:
        ma, mb = graph_identity(ga.metadata, include_run=run_metadata), graph_identity(gb.metadata, include_run=run_metadata)
        for key in sorted(set(ma) | set(mb)):
            va, vb = ma.get(key), mb.get(key)
            if va != vb:
                res.metadata.extend(_metadata_changes(key, va, vb))
        if run_metadata and ga.producer and gb.producer and ga.producer != gb.producer:
            res.metadata.append({"field": "producer", "a": ga.producer, "b": gb.producer})


def _metadata_changes(key: str, va: str | None, vb: str | None) -> list[dict[str, Any]]:
    """One change per metadata key, or per changed field when both values are JSON objects
    (e.g. ``yexport.options: keep_bn false -> true`` rather than two long JSON texts)."""
    try:
        ja, jb = json.loads(va or ""), json.loads(vb or "")
    except ValueError:
        ja = jb = None
    if not (isinstance(ja, dict) and isinstance(jb, dict)):
        return [{"field": key, "a": va, "b": vb}]
    return [{"field": f"{key}.{k}", "a": json.dumps(ja.get(k)) if k in ja else None,
             "b": json.dumps(jb.get(k)) if k in jb else None}
            for k in sorted(set(ja) | set(jb)) if ja.get(k) != jb.get(k) or (k in ja) != (k in jb)]


def node_entry(tag: str, side: Side, n: CNode) -> dict[str, Any]:
    data = side.data_refs(n.index) if side.data_types[n.index] else []
    reads = f"{tag.upper()}{orig(side, data[0])}" if data else ""
    return {tag: f"%{n.index}", "op": n.op, "name": n.name, "reads": reads}


def compare_pairs(sa: Side, sb: Side, pairs: list[tuple[int, int]], match: dict[int, int], ident_b: dict[int, int],
                  same_sig: list[bool] | None, ignore_values: bool, atol: float, res: DiffResult) -> None:
    """Every matched pair: node changes to ``res.changed``, initializer changes to ``res.initializers``.
    ``same_sig[k]`` says that pair ``k`` has equal signatures (op, attributes as compared, data-input
    and output types): only sources and constant inputs are left to check for it."""
    ga, gb = sa.g, sb.g
    seen: set[tuple[str, str]] = set()
    fa_get, fb_get, m_get = sa.first.get, sb.first.get, match.get
    slots_a, slots_b = sa.slots, sb.slots
    nodes_a, nodes_b = ga.nodes, gb.nodes
    init_a, init_b = sa.inits.get, sb.inits.get
    for k, (ia, ib) in enumerate(pairs):
        na, nb = nodes_a[ia], nodes_b[ib]
        if same_sig is not None and same_sig[k]:
            # the fast path: with equal signatures only the sources of the data inputs (each from the
            # matched counterpart of its producer?) and the constant inputs are left to compare
            sla, slb = slots_a[ia], slots_b[ib]
            ins_a, ins_b = na.inputs, nb.inputs
            da = ins_a if sla is None else [ins_a[j] for j in sla]  # Side.data_refs, inline
            db = ins_b if slb is None else [ins_b[j] for j in slb]
            for ra, rb in zip(da, db, strict=True):
                ka, kb = fa_get(ra), fb_get(rb)  # first outputs: the common case
                if ka is None or kb is None:
                    pa, pb = sa.producer(ra), sb.producer(rb)
                    if pa is None or pb is None or pa[1] != pb[1] or m_get(pa[0]) != pb[0]:
                        break
                elif m_get(ka) != kb:
                    break
            else:
                changes: list[str] = []
                if sla is not None or slb is not None:  # constant (or omitted) inputs to compare
                    # the common case first: the same slots hold initializers on both sides, each pair
                    # seen before or equal (anything else: the slot-by-slot comparison, from scratch)
                    equal: list[tuple[str, str]] = []
                    if sla == slb and len(ins_a) == len(ins_b):
                        for j in range(len(ins_a)):
                            if sla is not None and j in sla:
                                continue
                            wa, wb = ins_a[j], ins_b[j]
                            xa, xb = init_a(wa), init_b(wb)
                            if xa is None or xb is None:
                                break
                            if (wa, wb) not in seen:
                                if xa.type != xb.type or not (ignore_values or xa.same_content(xb)):
                                    break
                                equal.append((wa, wb))
                        else:
                            seen.update(equal)
                            continue
                    _constant_inputs(sa, sb, ia, ib, ignore_values, atol, res, seen, changes)
                if changes:
                    res.changed.append({"a": f"%{ia}", "b": f"%{ib}", "op": nb.op, "name": nb.name or na.name,
                                        "changes": changes})
                continue
        changes = compare_node(sa, sb, ia, ib, match, ident_b, ignore_values, atol, res, seen)
        if changes:
            res.changed.append({"a": f"%{ia}", "b": f"%{ib}", "op": nb.op, "name": nb.name or na.name,
                                "changes": changes})


def compare_node(sa: Side, sb: Side, ia: int, ib: int, match: dict[int, int], ident_b: dict[int, int],
                 ignore_values: bool, atol: float, res: DiffResult, seen: set[tuple[str, str]]) -> list[str]:
    """What changed in a matched node pair; initializer changes go to ``res.initializers``."""
    na, nb = sa.nodes[ia], sb.nodes[ib]
    opset = sa.g.opsets.get("ai.onnx")
    changes: list[str] = []
    if na.op != nb.op:
        changes.append(f"op: {na.op} -> {nb.op}")
    if na.attrs != nb.attrs:
        for attr in sorted(set(na.attrs) | set(nb.attrs)):
            xa, xb = na.attrs.get(attr), nb.attrs.get(attr)
            if ignore_values and xa is not None and xb is not None:
                xa, xb = strip_hashes(xa), strip_hashes(xb)
            if xa != xb:
                changes.append(f"{attr}: {_v(xa)} -> {_v(xb)}")
    da, db = sa.data(ia), sb.data(ib)
    if len(da) != len(db):
        changes.append(f"data inputs: {len(da)} -> {len(db)}")
    for (slot, ra, ta), (_, rb, tb) in zip(da, db, strict=False):
        if ta != tb:
            changes.append(f"{slot_name(na.op, slot, opset)}: {ta} -> {tb}")
        src_a, src_b = sa.source(ra, match), sb.source(rb, ident_b)
        if src_a != src_b and src_a[0] in ("node", "in") and src_b[0] in ("node", "in"):
            changes.append(f"{slot_name(na.op, slot, opset)}: reads A{orig(sa, ra)} -> B{sb.describe(src_b)}")
    if na.output_types != nb.output_types:
        if len(na.outputs) != len(nb.outputs):
            changes.append(f"outputs: {len(na.outputs)} -> {len(nb.outputs)}")
        for j, (ta, tb) in enumerate(zip(na.output_types, nb.output_types, strict=False)):
            if ta != tb:
                changes.append(f"output {j}: {ta} -> {tb}")
    if len(da) != len(na.inputs) or len(db) != len(nb.inputs):
        _constant_inputs(sa, sb, ia, ib, ignore_values, atol, res, seen, changes)
    return changes


def _constant_inputs(sa: Side, sb: Side, ia: int, ib: int, ignore_values: bool, atol: float, res: DiffResult,
                     seen: set[tuple[str, str]], changes: list[str]) -> None:
    """Constant inputs slot by slot: initializers (also behind Identity) are compared, not counted as
    structure; a constant that became computed (or the other way round) is a change of the node.
    A slot where neither side reads a constant has nothing to compare here (initializers and their
    Identity aliases are constants)."""
    na, nb = sa.nodes[ia], sb.nodes[ib]
    ins_a, ins_b = na.inputs, nb.inputs
    la, lb = len(ins_a), len(ins_b)
    inits_a, inits_b, alias_a, alias_b = sa.inits, sb.inits, sa.alias, sb.alias
    const_a, const_b = sa.const, sb.const
    for slot in range(max(la, lb)):
        ra = ins_a[slot] if slot < la else "_"
        rb = ins_b[slot] if slot < lb else "_"
        ca, cb = ra in const_a, rb in const_b
        if not (ca or cb):
            continue
        wa = ra if ra in inits_a else alias_a.get(ra)  # init_of, inline
        wb = rb if rb in inits_b else alias_b.get(rb)
        if wa is not None and wb is not None:
            if (wa, wb) not in seen:
                seen.add((wa, wb))
                xa, xb = inits_a[wa], inits_b[wb]
                if xa.type == xb.type and (ignore_values or xa.same_content(xb)):
                    continue  # what compare_init finds for equal types and contents
                c = compare_init(xa, xb, ignore_values, atol)
                if c:
                    res.initializers.append({**c, "where": _where(sa, ia, ib, slot)})
        elif wa is not None and rb == "_":
            res.initializers.append({"kind": "removed", "where": _where(sa, ia, ib, slot), "a": inits_a[wa].type,
                                     "b": None})
        elif ra == "_" and wb is not None:
            res.initializers.append({"kind": "added", "where": _where(sa, ia, ib, slot), "a": None,
                                     "b": inits_b[wb].type})
        elif ra != "_" and rb != "_" and ca != cb:
            changes.append(f"{_slot(sa, na.op, slot)}: {'constant' if ca else 'computed value'} -> "
                           f"{'constant' if cb else 'computed value'}")
        elif (ra == "_") != (rb == "_"):
            changes.append(f"{_slot(sa, na.op, slot)}: {'absent' if ra == '_' else 'present'} -> "
                           f"{'absent' if rb == '_' else 'present'}")


def _slot(side: Side, op: str, slot: int) -> str:
    return slot_name(op, slot, side.g.opsets.get("ai.onnx"))


def _where(sa: Side, ia: int, ib: int, slot: int) -> str:
    op = sa.nodes[ia].op
    return f"A%{ia}/B%{ib} {op} {_slot(sa, op, slot)}"


def compare_unused_initializers(sa: Side, sb: Side, res: DiffResult) -> None:
    def unused(side: Side) -> Counter[str]:  # read by no node and no graph output
        used = side.used
        return Counter([i.type for i in side.g.initializers if i.ref not in used])

    ua, ub = unused(sa), unused(sb)
    for t in sorted(set(ua) | set(ub)):
        res.initializers.extend({"kind": "removed", "where": "unused initializer", "a": t, "b": None}
                                for _ in range(ua[t] - ub[t]))
        res.initializers.extend({"kind": "added", "where": "unused initializer", "a": None, "b": t}
                                for _ in range(ub[t] - ua[t]))


def compare_interface(sa: Side, sb: Side, match: dict[int, int], ident_b: dict[int, int], res: DiffResult,
                      check_names: bool) -> None:
    ga, gb = sa.g, sb.g
    for title, la, lb, target in (("input", ga.inputs, gb.inputs, res.inputs),
                                  ("output", ga.outputs, gb.outputs, res.outputs)):
        for k in range(max(len(la), len(lb))):
            va: CValue | None = la[k] if k < len(la) else None
            vb: CValue | None = lb[k] if k < len(lb) else None
            if va is None or vb is None:
                target.append({"index": k, "what": "added" if va is None else "removed",
                               "a": None if va is None else f"{va.name or va.ref}: {va.type}",
                               "b": None if vb is None else f"{vb.name or vb.ref}: {vb.type}"})
                continue
            if check_names and va.name is not None and vb.name is not None and va.name != vb.name:
                target.append({"index": k, "what": "name", "a": va.name, "b": vb.name})
            if va.type != vb.type:
                target.append({"index": k, "what": "type", "a": va.type, "b": vb.type})
            if title == "output" and va.source and vb.source:
                src_a, src_b = sa.source(va.source, match), sb.source(vb.source, ident_b)
                if src_a[0] in ("node", "in") and src_b[0] in ("node", "in") and src_a != src_b:
                    target.append({"index": k, "what": "source", "a": f"A{orig(sa, va.source)}",
                                   "b": f"B{sb.describe(src_b)}"})


def compare_init(ia: CInit, ib: CInit, ignore_values: bool, atol: float) -> dict[str, Any] | None:
    if ia.type != ib.type:
        return {"kind": "type", "a": ia.type, "b": ib.type}
    if ignore_values:
        return None
    if ia.has_values and ib.has_values:
        if ia.same_content(ib):  # inline bytes compared as they are, anything else streamed into a hash
            return None
        if ia.external or ib.external:
            from exporter.graph.tensors import compare_streamed

            return compare_streamed(ia, ib, atol)
        da, db = ia.data(), ib.data()
        try:
            import numpy as np

            xa, xb = ia.array(da), ib.array(db)
            if xa.dtype.kind in "biuf" and xa.shape == xb.shape:
                if xa.dtype.kind == "f" and xa.dtype.itemsize >= 4:
                    delta = np.abs(xa - xb)
                else:
                    delta = np.abs(xa.astype(np.float64) - xb.astype(np.float64))
                dmax = float(delta.max()) if delta.size else 0.0
                if dmax <= atol:
                    return None
                return {"kind": "values", "a": ia.type, "b": ib.type, "detail": f"max |delta| {dmax:.4g}",
                        "max_abs_diff": dmax}
        except Exception:  # noqa: BLE001 - packed or odd dtypes: bytes differ is all we know
            pass
        return {"kind": "values", "a": ia.type, "b": ib.type, "detail": "bytes differ"}
    ha, hb = ia.digest() if ia.has_values else ia._digest, ib.digest() if ib.has_values else ib._digest
    if ha is None or hb is None or ha == hb:
        return None
    return {"kind": "values", "a": ia.type, "b": ib.type, "detail": f"hash {ha} -> {hb}"}
