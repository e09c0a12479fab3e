"""Node matching for ``yexport diff`` that survives width changes.

Two candidate matchings of the canonical node sequences are built and the better one is kept:

- **structure first**: nodes are aligned on op, attributes and arity (and, where both files name
  their nodes with module scopes such as ``/model.2/m.0/cv1/conv/Conv``, on that scope), shapes
  left out, so halving every channel count changes nothing in the alignment;
- **exact first**: aligned on the full signature including the shapes of data inputs and outputs
  (the older behaviour, best when a node was inserted into a chain of look-alikes).

Inside each unmatched stretch both pair nodes by op alone. The matching with more pairs of equal
structure wins; ties go to the one with more pairs of equal shapes. Names only guide the
alignment and are never reported as a difference. When the exact matching pairs as many nodes as
the smaller graph has, all with equal signatures, nothing can beat it and the structural one is
not built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exporter.graph.scopes import module_scope
from exporter.graph.tensors import strip_hashes


def layer_of(name: str | None) -> str | None:
    """``model.2`` for a node of layer 2, else None."""
    s = module_scope(name)
    return s[0] if s else None


_SCOPED = ("model.", "/model.")  # every name module_scope accepts starts so


def _scopes(side: Any) -> list[tuple[str, str | None] | None]:
    """The module scope of every node of a side (computed once per side)."""
    cached = getattr(side, "_scopes", None)
    if cached is None:
        cached = [module_scope(name) if name and name.startswith(_SCOPED) else None
                  for name in [n.name for n in side.nodes]]
        side._scopes = cached
    return cached


def _scopes_usable(sa: Any, sb: Any) -> bool:
    """Both graphs name most nodes with layer scopes, and mostly the same ones."""
    xa, xb = _scopes(sa), _scopes(sb)
    if not xa or not xb:
        return False
    if sum(s is not None for s in xa) < 0.5 * len(xa) or sum(s is not None for s in xb) < 0.5 * len(xb):
        return False
    la, lb = {s[0] for s in xa if s}, {s[0] for s in xb if s}
    return len(la & lb) >= 0.5 * max(len(la), len(lb))


class Matching:
    """The matched pairs, and per pair whether both nodes have the same signature (op, attributes as
    compared, data-input and output types): :func:`exporter.graph.diff_compare.compare_pairs` checks
    such a pair for sources and constant inputs only."""

    def __init__(self, pairs: list[tuple[int, int]], same: list[bool]) -> None:
        self.pairs = pairs
        self.same = same


def match(sa: Any, sb: Any, ignore_values: bool, notes: list[str],
          align: Callable[[list[int], list[int], list[str]], list[tuple[int, int]]]) -> Matching:
    """The :class:`Matching` of two sides (the diff's per-graph lookups, with ``data_types``)."""
    attr_ids: dict[int, int] = {}  # rendered attribute dicts are shared between nodes: keyed by id
    attr_intern: dict[tuple, int] = {}

    def attrs_of(n: Any) -> int:
        key = attr_ids.get(id(n.attrs))
        if key is None:
            items = tuple((k, strip_hashes(v)) for k, v in n.attrs.items()) if ignore_values else tuple(n.attrs.items())
            key = attr_ids[id(n.attrs)] = attr_intern.setdefault(items, len(attr_intern))
        return key

    # exact signatures, interned to ints shared by both sides
    intern: dict[tuple, int] = {}

    def exact_sigs(side: Any) -> list[int]:
        out: list[int] = []
        append = out.append
        aget = attr_ids.get
        for n, dt in zip(side.nodes, side.data_types, strict=True):
            a = aget(id(n.attrs))
            if a is None:
                a = attrs_of(n)
            key = (n.op, a, dt, tuple(n.output_types))
            s = intern.get(key)
            if s is None:
                s = intern[key] = len(intern)
            append(s)
        return out

    sig_a, sig_b = exact_sigs(sa), exact_sigs(sb)
    use_scope = _scopes_usable(sa, sb)

    struct_keys: dict[tuple[int, int], tuple] = {}

    def struct_key(side: Any, n: Any) -> tuple:
        k = (id(side), n.index)
        key = struct_keys.get(k)
        if key is None:
            scope = _scopes(side)[n.index] if use_scope else None
            key = struct_keys[k] = (scope, n.op, attrs_of(n), len(side.data_types[n.index]), len(n.outputs))
        return key

    def coarse_key(side: Any, n: Any) -> Any:
        # the op alone; a node without data inputs (Constant, ...) pairs only with one of its type
        return n.op if side.data_types[n.index] else (n.op, tuple(n.output_types))

    def run(first_a: list[Any], first_b: list[Any]) -> list[tuple[int, int]]:
        anchored = align(first_a, first_b, notes)
        ops_id: dict[Any, int] = {}
        pairs: list[tuple[int, int]] = []
        prev_a = prev_b = -1
        na, nb = len(sa.nodes), len(sb.nodes)
        for ia, ib in [*anchored, (na, nb)]:
            if ia - prev_a > 1 and ib - prev_b > 1:
                lo_a, lo_b = prev_a + 1, prev_b + 1
                ops_a = [ops_id.setdefault(coarse_key(sa, n), len(ops_id)) for n in sa.nodes[lo_a:ia]]
                ops_b = [ops_id.setdefault(coarse_key(sb, n), len(ops_id)) for n in sb.nodes[lo_b:ib]]
                pairs.extend((lo_a + x, lo_b + y) for x, y in align(ops_a, ops_b, notes))
            if ia < na:
                pairs.append((ia, ib))
            prev_a, prev_b = ia, ib
        return pairs

    def score(pairs: list[tuple[int, int]]) -> tuple[int, int, int]:
        same_struct = same_exact = 0
        for ia, ib in pairs:
            a, b = sa.nodes[ia], sb.nodes[ib]
            if struct_key(sa, a) == struct_key(sb, b):  # with layer scopes where both files have them
                same_struct += 1
                if sig_a[ia] == sig_b[ib]:
                    same_exact += 1
        return same_struct, same_exact, len(pairs)

    def result(pairs: list[tuple[int, int]]) -> Matching:
        return Matching(pairs, [sig_a[i] == sig_b[j] for i, j in pairs])

    exact = run(sig_a, sig_b)
    m = min(len(sa.nodes), len(sb.nodes))
    if exact and len(exact) == m and all(sig_a[i] == sig_b[j] for i, j in exact):
        # as many pairs as there can be, every one with equal signatures: equal structure too (the
        # signature holds the op, attributes and arity), unless scopes differ
        if not use_scope or all(struct_key(sa, sa.nodes[i]) == struct_key(sb, sb.nodes[j]) for i, j in exact):
            return Matching(exact, [True] * len(exact))
    intern_s: dict[tuple, int] = {}
    structural = run([intern_s.setdefault(struct_key(sa, n), len(intern_s)) for n in sa.nodes],
                     [intern_s.setdefault(struct_key(sb, n), len(intern_s)) for n in sb.nodes])
    return result(structural if score(structural) > score(exact) else exact)


def match_nodes(sa: Any, sb: Any, ignore_values: bool, notes: list[str],
                align: Callable[[list[int], list[int], list[str]], list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """Matched (A index, B index) pairs; ``sa``/``sb`` are the diff's per-graph lookups."""
    return match(sa, sb, ignore_values, notes, align).pairs
