"""Which nodes of a graph compute constants: the one rule that the snapshot's canonical order, the
diff, the Graphviz drawing and the tidy stage share.

A node is *constant-derived* when its outputs are fixed by the file alone: it is deterministic (not a
``Random*``, ``Multinomial`` or ``Bernoulli`` node) and every value it reads is an initializer or an
output of another constant-derived node. The values a node reads are its non-empty inputs, except
those of which only the type counts (the second input of ``CastLike``), plus the outer values its
subgraphs read. A node that reads nothing (``Constant``) is constant-derived.

The rule is a fixed point, so it does not depend on the order of the node list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: ops whose outputs differ from run to run: never constant, whatever they read
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})
#: ops that read only the element type of some inputs (by position), never their values
TYPE_ONLY_INPUTS: dict[str, tuple[int, ...]] = {"CastLike": (1,)}


def constant_nodes(ops: Sequence[str], inputs: Sequence[Sequence[str]], outputs: Sequence[Sequence[str]],
                   constants: Iterable[str], *, implicit: dict[int, Sequence[str]] | None = None,
                   type_reads: bool = False, omitted: str = "", exact: bool = False) -> tuple[list[bool], set[str]]:
    """``(flags, values)``: per node whether it is constant-derived (see the module doc), and every
    constant value (``constants`` and the outputs of those nodes).

    ``ops`` are op types (``domain.Op`` outside the default domain), ``inputs``/``outputs`` the
    value names per node (``omitted``: the name of an absent optional input or output), ``constants``
    the initializers, ``implicit`` the outer values read by the subgraphs of a node. With
    ``type_reads`` an input read for its type only counts as a read all the same (the snapshot's
    order places a node after everything it reads). ``exact`` says that ``inputs`` already are
    exactly what each node reads (no omitted names, subgraph reads included), as given."""
    n = len(ops)
    values = set(constants)
    values.discard(omitted)
    if exact:
        reads: Sequence[Sequence[str]] = inputs
    else:
        rd: list[list[str]] = []
        for i in range(n):
            ins = inputs[i]
            op = ops[i]
            if not type_reads and op in TYPE_ONLY_INPUTS:
                skip = TYPE_ONLY_INPUTS[op]
                r = [x for k, x in enumerate(ins) if x != omitted and k not in skip]
            elif omitted in ins:
                r = [x for x in ins if x != omitted]
            else:
                r = list(ins)
            if implicit and i in implicit:
                r.extend(implicit[i])
            rd.append(r)
        reads = rd
    flags = [False] * n
    issuperset = values.issuperset
    live = [i for i, op in enumerate(ops) if op not in NONDETERMINISTIC] if NONDETERMINISTIC.intersection(ops) \
        else range(n)
    # a pass in list order settles a topologically sorted graph; a second one finds what the first
    # missed in any other order, and a work list then finishes
    changed = False
    for i in live:
        if issuperset(reads[i]):
            flags[i] = changed = True
            values.update(o for o in outputs[i] if o != omitted)
    if changed:
        changed = False
        for i in live:
            if not flags[i] and issuperset(reads[i]):
                flags[i] = changed = True
                values.update(o for o in outputs[i] if o != omitted)
    if not changed:
        return flags, values
    waiting: dict[str, list[int]] = {}
    stack: list[int] = []
    for i in live:
        if not flags[i]:
            missing = [x for x in reads[i] if x not in values]
            if not missing:
                stack.append(i)
            for x in missing:
                waiting.setdefault(x, []).append(i)
    while stack:
        i = stack.pop()
        if flags[i] or not issuperset(reads[i]):
            continue
        flags[i] = True
        for o in outputs[i]:
            if o != omitted and o not in values:
                values.add(o)
                stack.extend(waiting.pop(o, ()))
    return flags, values


def graph_constant_nodes(graph: Any) -> tuple[list[bool], set[str]]:
    """:func:`constant_nodes` of an ONNX GraphProto (initializers, sparse ones, subgraph reads)."""
    nodes = list(graph.node)
    ops = [n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in nodes]
    inits = [t.name for t in graph.initializer] + [t.values.name for t in graph.sparse_initializer]
    implicit: dict[int, Sequence[str]] = {}
    for i, n in enumerate(nodes):
        for a in n.attribute:
            if a.type in (5, 10):  # GRAPH, GRAPHS
                implicit[i] = sorted(subgraph_free_names(n))
                break
    return constant_nodes(ops, [n.input for n in nodes], [n.output for n in nodes], inits, implicit=implicit)


def subgraph_free_names(node: Any) -> set[str]:
    """The outer values the subgraphs of ``node`` read."""
    out: set[str] = set()
    for a in node.attribute:
        for sg in attr_graphs(a):
            out |= graph_free_names(sg)
    return out


def graph_free_names(graph: Any) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: set[str] = set()
    for n in graph.node:
        used.update(i for i in n.input if i)
        for a in n.attribute:
            for sg in attr_graphs(a):
                used |= graph_free_names(sg)
        defined.update(o for o in n.output if o)
    used.update(o.name for o in graph.output)
    return used - defined


def attr_graphs(a: Any) -> list[Any]:
    if a.type == 5:  # GRAPH
        return [a.g]
    if a.type == 10:  # GRAPHS
        return list(a.graphs)
    return []
