"""The canonical order of a graph's nodes (see :mod:`exporter.graph._canon`): depth-first over the
dataflow, so that after a node the consumers it made ready come next; ties between nodes made ready
together broken by structure (the output they consume, op, attributes, output types) and last by
their position in the file; constant-derived nodes placed right before their first consumer.

It works on the plain lists the canonicalizer read from the graph once, never on protobuf messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def canonical_order(n_op: list[str], n_attrs: list[dict[str, str]], n_out: list[list[str]], deps: list[list[str]],
                    producer: dict[str, int], consumers: dict[str, list[int]], is_const: list[bool],
                    const_values: set[str], gin_pos: dict[str, int], output_names: Sequence[str],
                    tget: Callable[..., str]) -> tuple[list[int], list[str]]:
    """(node positions in canonical order, notes). ``deps``: what each node reads (no empty names,
    the outer values of its subgraphs included); ``producer``: value -> node; ``consumers``: value
    -> nodes reading it (in file order, once per read); ``gin_pos``: graph input -> position;
    ``tget``: a value's type text."""
    n_nodes = len(n_op)
    cget = consumers.get
    # how many distinct non-constant producer nodes each node waits for, and which
    # constant-derived producers must be placed just before it
    const_made = const_values & producer.keys()
    var_prod = {x: p for x, p in producer.items() if not is_const[p]} if const_made else producer
    vget = var_prod.get
    waits = [0] * n_nodes
    const_prods: dict[int, list[int]] = {}
    for i in range(n_nodes):
        if is_const[i]:
            continue
        ds = deps[i]
        nd_ = len(ds)
        if nd_ == 1:
            p = vget(ds[0])
            waits[i] = 0 if p is None or p == i else 1
        elif nd_ == 2:
            p, q = vget(ds[0]), vget(ds[1])
            waits[i] = (p is not None and p != i) + (q is not None and q != i and q != p)
        elif nd_ == 3:  # a Conv with its bias, a Clip, a Resize
            p, q, r = vget(ds[0]), vget(ds[1]), vget(ds[2])
            waits[i] = (p is not None and p != i) + (q is not None and q != i and q != p) \
                + (r is not None and r != i and r != p and r != q)
        elif nd_:
            prods = {var_prod[x] for x in ds if x in var_prod}
            waits[i] = len(prods) - (i in prods)
        if const_made:
            cp = [producer[x] for x in ds if x in const_made]
            if cp:
                const_prods[i] = cp

    def key(i: int, via: int) -> tuple:
        return (via, n_op[i], tuple(n_attrs[i].items()), tuple(tget(o, "?") for o in n_out[i]), i)

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
                if pr is not None and is_const[pr] and not emitted[pr]:
                    stack.append((pr, False))

    initial = []
    n_gin = len(gin_pos)
    for i in range(n_nodes):
        if not is_const[i] and waits[i] == 0:
            gpos = [gin_pos[x] for x in deps[i] if x in gin_pos]
            initial.append(key(i, min(gpos) if gpos else n_gin))
    initial.sort(reverse=True)
    stack = [k[-1] for k in initial]
    push = stack.append
    while stack:
        i = stack.pop()
        if emitted[i]:
            continue
        if const_prods and i in const_prods:
            for q in const_prods[i]:
                if not emitted[q]:
                    emit_const(q)
        emitted[i] = True
        order.append(i)
        outs = n_out[i]
        if len(outs) == 1:
            cons = cget(outs[0]) if outs[0] else None
            if not cons:
                continue
            if len(cons) == 1:  # the common case: one consumer, made ready or not
                c = cons[0]
                if not (is_const[c] or emitted[c]):
                    w = waits[c] = waits[c] - 1
                    if w == 0:
                        push(c)
                continue
            cand = [(c, 0) for c in dict.fromkeys(cons)]
        else:
            seen: dict[int, int] = {}
            for j, o in enumerate(outs):
                for c in cget(o, ()) if o else ():
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
            push(ready[0][0])
        elif ready:
            stack.extend(k[-1] for k in sorted((key(c, j) for c, j in ready), reverse=True))
    # leftovers: constants feeding only graph outputs or nothing, and nodes caught in cycles
    for name in output_names:
        pr = producer.get(name)
        if pr is not None and is_const[pr] and not emitted[pr]:
            emit_const(pr)
    notes: list[str] = []
    if len(order) < n_nodes:
        for i in range(n_nodes):
            if not emitted[i]:
                if is_const[i]:
                    emit_const(i)
                else:
                    if not notes:
                        notes.append("graph is not a DAG or reads undefined values; leftover nodes kept in file order")
                    emitted[i] = True
                    order.append(i)
    return order, notes
