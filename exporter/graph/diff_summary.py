"""The story of a diff, told before the node lists: systematic changes between graph A and B.

Each finding is one line: op-count changes (``+57 BatchNormalization``), opset and IR version,
input and output signatures, the parameter count (``B has 26% of A's parameters``), channel widths
(``every Conv has half the channels``, or per layer), depth (repeats per module, from node scopes
such as ``/model.2/m.0/...``) and module substitutions (``model.0: Focus -> Conv 6x6 stride 2``,
from the ``yexport.layers`` metadata). Node-level changes that only follow from these (shapes of a
width change) are counted, not listed, and the markdown folds them per layer.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from exporter.graph.canon_graph import CanonGraph, CNode
from exporter.graph.match import layer_of

_TYPE_RE = re.compile(r"^(?P<dt>[a-z0-9]+)\[(?P<dims>[^\]]*)\]$")
_FLOAT_DTYPES = {"f32", "f16", "f64", "bf16"}
_WIDTH_OPS = ("Conv", "ConvTranspose")
_MAX_LAYER_LINES = 8
_RATIO_WORDS = {Fraction(1, 2): "half the", Fraction(2): "twice the", Fraction(1, 4): "a quarter of the",
                Fraction(4): "four times the", Fraction(3, 4): "three quarters of the",
                Fraction(3, 2): "1.5 times the", Fraction(1, 3): "a third of the", Fraction(3): "three times the"}
_SHAPE_CHANGE_RE = re.compile(r"^(input \d+.*|output \d+): \S+ -> \S+$")


def dims_of(type_text: str) -> list[str] | None:
    """``['1', '32', '320', '320']`` for ``f32[1,32,320,320]``; None for other types."""
    m = _TYPE_RE.match(type_text or "")
    if not m:
        return None
    return [d for d in m["dims"].split(",")] if m["dims"] else []


def parameter_count(g: CanonGraph) -> int:
    """Elements of the floating-point initializers (weights, biases, BatchNorm statistics)."""
    total = 0
    for type_text, count in Counter(i.type for i in g.initializers).items():  # a few distinct types
        m = _TYPE_RE.match(type_text or "")
        if not m or m["dt"] not in _FLOAT_DTYPES:
            continue
        n = 1
        for d in (m["dims"].split(",") if m["dims"] else []):
            if not d.isdigit():
                n = 0
                break
            n *= int(d)
        total += n * count
    return total


@functools.lru_cache(maxsize=1024)
def _channels(type_text: str) -> int | None:
    dims = dims_of(type_text)
    if dims and len(dims) >= 2 and dims[1].isdigit():
        return int(dims[1])
    return None


def _ratio_text(r: Fraction) -> str:
    if r in _RATIO_WORDS:
        return _RATIO_WORDS[r]
    return f"{float(r):.3g}x the"


def _ratio_short(r: Fraction) -> str:
    return f"x{float(r):.3g}"


def _layers(g: CanonGraph) -> list[str] | None:
    try:
        v = json.loads(g.metadata.get("yexport.layers", ""))
    except ValueError:
        return None
    return [str(x) for x in v] if isinstance(v, list) else None


def _layer_name(ia: CNode | None, ib: CNode | None) -> str | None:
    return layer_of(ib.name if ib is not None else None) or layer_of(ia.name if ia is not None else None)


def _sort_layer(name: str) -> tuple[int, str]:
    m = re.match(r"model\.(\d+)$", name)
    return (int(m.group(1)), "") if m else (1 << 30, name)


def _conv_desc(g: CanonGraph, layer: int) -> str:
    """``Conv 6x6 stride 2`` for the first Conv of ``model.N`` (by node name; layer 0: the first Conv)."""
    named = [n for n in g.nodes if n.op == "Conv" and layer_of(n.name) == f"model.{layer}"]
    if not named and layer == 0:
        named = [n for n in g.nodes if n.op == "Conv"][:1]
    if not named:
        return "Conv"
    n = named[0]
    try:
        k = json.loads(n.attrs.get("kernel_shape", "[]"))
        s = json.loads(n.attrs.get("strides", "[]"))
    except ValueError:
        return "Conv"
    text = "Conv"
    if k:
        text += " " + "x".join(map(str, k))
    if s and any(v != 1 for v in s):
        text += f" stride {s[0] if len(set(s)) == 1 else 'x'.join(map(str, s))}"
    return text


def summarize(ga: CanonGraph, gb: CanonGraph, sa: Any, sb: Any, pairs: list[tuple[int, int]], res: Any) -> list[str]:
    """Findings, most telling first; also tags node and initializer entries of ``res`` with their layer."""
    out: list[str] = []
    if res.op_delta:
        parts = [f"{d:+d} {op}" for op, d in res.op_delta.items()]
        out.append(", ".join(parts[:8]) + (f" (and {len(parts) - 8} more ops)" if len(parts) > 8 else ""))
    for c in res.model:
        out.append(f"{c['field']}: {c['a']} -> {c['b']}")
    for title, items in (("input", res.inputs), ("output", res.outputs)):
        for c in items:
            out.append(f"{title} {c['index']} {c['what']}: {c['a'] if c['a'] is not None else '(none)'} -> "
                       f"{c['b'] if c['b'] is not None else '(none)'}")
    pa, pb = parameter_count(ga), parameter_count(gb)
    if pa != pb and pa and pb:
        out.append(f"parameters: {pa:,} -> {pb:,} (B has {100 * pb / pa:.0f}% of A's parameters)")
    out.extend(_substitutions(ga, gb))
    out.extend(_widths(ga, gb, pairs))
    out.extend(_depths(sa, sb, _layers(ga), _layers(gb)))
    shape_only = sum(1 for e in res.changed if e["changes"] and all(_SHAPE_CHANGE_RE.match(c) for c in e["changes"]))
    if shape_only and shape_only == len(res.changed) and len(res.changed) > 1:
        out.append(f"{shape_only} matched nodes changed only in shapes")
    elif shape_only > 1:
        out.append(f"{shape_only} of {len(res.changed)} changed nodes changed only in shapes")
    _tag_layers(ga, gb, res)
    return out


def _substitutions(ga: CanonGraph, gb: CanonGraph) -> list[str]:
    """Module types per layer (``yexport.layers``): substitutions such as Focus -> Conv 6x6 or
    SPP -> SPPF, paired in layer order, plus layers added, removed or reordered."""
    la, lb = _layers(ga), _layers(gb)
    if not la or not lb or la == lb:
        return []

    def desc(g: CanonGraph, t: str, i: int) -> str:
        return _conv_desc(g, i) if t == "Conv" else t

    out = []
    if len(la) != len(lb):
        out.append(f"layers: {len(la)} -> {len(lb)}")
    gone, new = Counter(la) - Counter(lb), Counter(lb) - Counter(la)
    removed, added = [], []
    for i, t in enumerate(la):
        if gone[t] and (i >= len(lb) or lb[i] != t):
            gone[t] -= 1
            removed.append((i, t))
    for i, t in enumerate(lb):
        if new[t] and (i >= len(la) or la[i] != t):
            new[t] -= 1
            added.append((i, t))
    for (i, x), (j, y) in zip(removed, added, strict=False):
        where = f"model.{i}" if i == j else f"model.{i} -> model.{j}"
        out.append(f"{where}: {desc(ga, x, i)} -> {desc(gb, y, j)}")
    out.extend(f"model.{i}: {t} removed" for i, t in removed[len(added):])
    out.extend(f"model.{j}: {t} added" for j, t in added[len(removed):])
    if not removed and not added:
        moved = [f"model.{i}" for i, (x, y) in enumerate(zip(la, lb, strict=False)) if x != y]
        out.append(f"layer order changed at {', '.join(moved[:_MAX_LAYER_LINES])}")
    if len(out) > _MAX_LAYER_LINES + 1:
        out = out[:_MAX_LAYER_LINES] + [f"... and {len(out) - _MAX_LAYER_LINES} more layer changes"]
    return out


def _widths(ga: CanonGraph, gb: CanonGraph, pairs: list[tuple[int, int]]) -> list[str]:
    changed: list[tuple[CNode, CNode, Fraction]] = []
    same: list[tuple[CNode, CNode]] = []
    channels = functools.cache(_channels)  # per type text: a graph has few
    for ia, ib in pairs:
        a, b = ga.nodes[ia], gb.nodes[ib]
        if a.op != b.op or a.op not in _WIDTH_OPS or not a.output_types or not b.output_types:
            continue
        ca, cb = channels(a.output_types[0]), channels(b.output_types[0])
        if not ca or not cb:
            continue
        if ca == cb:
            same.append((a, b))
        else:
            changed.append((a, b, Fraction(cb, ca)))
    if not changed:  # no width changed: no layer needs naming
        return []
    convs = [(_layer_name(a, b), r) for a, b, r in changed]
    unchanged = [_layer_name(a, b) for a, b in same]
    total = len(convs) + len(unchanged)
    ratios = Counter(r for _, r in convs)
    if len(ratios) == 1:
        r = next(iter(ratios))
        if not unchanged:
            return [f"widths: every Conv has {_ratio_text(r)} channels ({total} Convs)"]
        where = sorted({x for x in unchanged if x}, key=_sort_layer)
        at = f", in {', '.join(where)}" if where else ""
        return [f"widths: every Conv has {_ratio_text(r)} channels except {len(unchanged)} that keep theirs{at} "
                f"({len(convs)} of {total} Convs)"]
    per_layer: dict[str, Counter] = defaultdict(Counter)
    for layer, r in convs:
        per_layer[layer or "(unnamed)"][r] += 1
    lines = [f"widths scaled per layer ({len(convs)} of {total} Convs changed):"]
    items = sorted(per_layer.items(), key=lambda kv: _sort_layer(kv[0]))
    for layer, rs in items[:_MAX_LAYER_LINES]:
        lines.append(f"  {layer}: " + ", ".join(f"{n} Conv{'s' if n > 1 else ''} {_ratio_short(r)}" for r, n in
                                                sorted(rs.items())))
    if len(items) > _MAX_LAYER_LINES:
        lines.append(f"  ... and {len(items) - _MAX_LAYER_LINES} more layers")
    return lines


def _depths(sa: Any, sb: Any, la: list[str] | None, lb: list[str] | None) -> list[str]:
    from exporter.graph.match import _scopes, _scopes_usable

    if not _scopes_usable(sa, sb):
        return []

    def repeats(side: Any) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for s in _scopes(side):
            if s and s[1]:
                out[s[0]].add(s[1])
        return out

    ra, rb = repeats(sa), repeats(sb)
    lines = []
    for layer in sorted(set(ra) & set(rb), key=_sort_layer):
        k = _sort_layer(layer)[0]
        if la and lb and k < len(la) and k < len(lb) and la[k] != lb[k]:
            continue  # another module there: a substitution, not a depth change
        if len(ra[layer]) != len(rb[layer]):
            lines.append(f"depth: {layer}: {len(ra[layer])} -> {len(rb[layer])} repeats")
    if len(lines) > _MAX_LAYER_LINES + 1:
        lines = lines[:_MAX_LAYER_LINES] + [f"depth: ... and {len(lines) - _MAX_LAYER_LINES} more layers"]
    return lines


_WHERE_B = re.compile(r"B%(\d+)")
_WHERE_A = re.compile(r"A%(\d+)")


def _tag_layers(ga: CanonGraph, gb: CanonGraph, res: Any) -> None:
    """Add ``layer`` (``model.N``) to node and initializer entries, where node names tell it."""
    for e in (*res.added, *res.removed, *res.changed):
        e.setdefault("layer", layer_of(e.get("name")))
    for c in res.initializers:
        where = c.get("where", "")
        mb, ma = _WHERE_B.search(where), _WHERE_A.search(where)
        nb = gb.nodes[int(mb.group(1))] if mb and int(mb.group(1)) < len(gb.nodes) else None
        na = ga.nodes[int(ma.group(1))] if ma and int(ma.group(1)) < len(ga.nodes) else None
        c.setdefault("layer", _layer_name(na, nb))


def kinds_of_change(changes: list[str]) -> list[str]:
    kinds = []
    for c in changes:
        if _SHAPE_CHANGE_RE.match(c):
            k = "shapes"
        elif ": reads " in c:
            k = "rewired"
        elif c.startswith("op: "):
            k = "op"
        else:
            k = "attributes"
        if k not in kinds:
            kinds.append(k)
    return kinds


def grouped_rows(entries: list[dict[str, Any]], what: str, esc: Callable[[str], str] = str) -> list[str]:
    """Markdown table rows, one per layer: how many ``what`` entries and which ops / kinds
    (cell text passed through ``esc``, the renderer's markdown escaping)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        groups[e.get("layer") or "(no layer scope)"].append(e)
    rows = []
    for layer, items in sorted(groups.items(), key=lambda kv: _sort_layer(kv[0])):
        ops = Counter(e.get("op") or e.get("kind", "") for e in items)
        op_text = ", ".join(f"{n} {op}" for op, n in ops.most_common(4)) + (" ..." if len(ops) > 4 else "")
        if what == "changed":
            kinds: list[str] = []
            for e in items:
                for k in kinds_of_change(e.get("changes", [])):
                    if k not in kinds:
                        kinds.append(k)
            rows.append(f"| {esc(layer)} | {len(items)} | {esc(op_text)} | {', '.join(kinds)} |")
        else:
            rows.append(f"| {esc(layer)} | {len(items)} | {esc(op_text)} |")
    return rows
