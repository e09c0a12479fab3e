"""Node matching for ``yexport diff`` that survives width changes.

Two candidate matchings of the canonical node sequences are built and the better one is kept:

- **structure first**: nodes are aligned on op, attributes and arity (and, where both files name
  their nodes with module scopes such as ``/model.2/m.0/cv1/conv/Conv``, on that scope), shapes
  left out, so halving every channel count changes nothing in the alignment;
- **exact first**: aligned on the full signature including the shapes of data inputs and outputs
  (the older behaviour, best when a node was inserted into a chain of look-alikes).

Inside each unmatched stretch both pair nodes by op alone. The matching with more pairs of equal
structure wins; ties go to the one with more pairs of equal shapes. Names only guide the
alignment and are never reported as a difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exporter.graph._canon import CNode, strip_hashes
from exporter.graph.scopes import module_scope


def layer_of(name: str | None) -> str | None:
    """``model.2`` for a node of layer 2, else None."""
    s = module_scope(name)
    return s[0] if s else None


def _scopes_usable(sa: Any, sb: Any) -> bool:
    """Both graphs name most nodes with layer scopes, and mostly the same ones."""
    xa = [module_scope(n.name) for n in sa.nodes]
    xb = [module_scope(n.name) for n in sb.nodes]
    if not xa or not xb:
        return False
    if sum(s is not None for s in xa) < 0.5 * len(xa) or sum(s is not None for s in xb) < 0.5 * len(xb):
        return False
    la, lb = {s[0] for s in xa if s}, {s[0] for s in xb if s}
    return len(la & lb) >= 0.5 * max(len(la), len(lb))


def match_nodes(sa: Any, sb: Any, ignore_values: bool, notes: list[str],
                align: Callable[[list[int], list[int], list[str]], list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """Matched (A index, B index) pairs; ``sa``/``sb`` are the diff's per-graph lookups."""
    attr_keys: dict[int, tuple] = {}  # rendered attribute dicts are shared between nodes: key by id

    def attrs_of(n: CNode) -> tuple:
        key = attr_keys.get(id(n.attrs))
        if key is None:
            key = tuple((k, strip_hashes(v)) for k, v in n.attrs.items()) if ignore_values else tuple(n.attrs.items())
            attr_keys[id(n.attrs)] = key
        return key

    use_scope = _scopes_usable(sa, sb)

    # each key is asked for up to three times per node (two alignments, two scores): computed once
    struct_keys: dict[tuple[int, int], tuple] = {}
    exact_keys: dict[tuple[int, int], tuple] = {}

    def struct_key(side: Any, n: CNode) -> tuple:
        k = (id(side), n.index)
        key = struct_keys.get(k)
        if key is None:
            scope = module_scope(n.name) if use_scope else None
            key = struct_keys[k] = (scope, n.op, attrs_of(n), len(side.data[n.index]), len(n.outputs))
        return key

    def exact_key(side: Any, n: CNode) -> tuple:
        k = (id(side), n.index)
        key = exact_keys.get(k)
        if key is None:
            key = exact_keys[k] = (n.op, attrs_of(n), tuple([t for _, _, t in side.data[n.index]]),
                                   tuple(n.output_types))
        return key

    def coarse_key(side: Any, n: CNode) -> Any:
        # the op alone; a node without data inputs (Constant, ...) pairs only with one of its type
        return n.op if side.data[n.index] else (n.op, tuple(n.output_types))

    def run(first: Callable[[Any, CNode], Any]) -> list[tuple[int, int]]:
        intern: dict[Any, int] = {}
        sig_a = [intern.setdefault(first(sa, n), len(intern)) for n in sa.nodes]
        sig_b = [intern.setdefault(first(sb, n), len(intern)) for n in sb.nodes]
        anchored = align(sig_a, sig_b, notes)
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
                if exact_key(sa, a) == exact_key(sb, b):
                    same_exact += 1
        return same_struct, same_exact, len(pairs)

    exact = run(exact_key)
    if sa.nodes and sb.nodes and exact and len(exact) == len(sa.nodes) == len(sb.nodes) \
            and all(exact_key(sa, sa.nodes[i]) == exact_key(sb, sb.nodes[j]) for i, j in exact):
        return exact  # identical structure and shapes: nothing to improve
    structural = run(struct_key)
    return structural if score(structural) > score(exact) else exact
