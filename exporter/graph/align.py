"""Aligning two sequences of node signatures (ints): the matched index pairs of a shortest edit
script (Myers' O(ND) algorithm) while the edit distance stays small, patience anchors (signatures
unique on both sides) around which the same is done again where it does not, and difflib as the
last resort. Used by ``yexport diff`` (:mod:`exporter.graph.match`) and the Graphviz highlighting."""

from __future__ import annotations

import difflib
from collections import Counter

__all__ = ["align"]

_MAX_EDITS = 1000  # beyond this edit distance the aligner anchors on unique signatures first


def _myers(a: list[int], b: list[int], max_d: int) -> list[tuple[int, int]] | None:
    """Matched index pairs of a shortest edit script between ``a`` and ``b`` (Myers' O(ND)
    algorithm), or None when more than ``max_d`` edits would be needed."""
    n, m = len(a), len(b)
    pre = 0
    while pre < n and pre < m and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < n - pre and suf < m - pre and a[n - 1 - suf] == b[m - 1 - suf]:
        suf += 1
    pairs = list(zip(range(pre), range(pre), strict=True))
    aa, bb = a[pre:n - suf], b[pre:m - suf]
    mid = _myers_core(aa, bb, max_d)
    if mid is None:
        return None
    pairs.extend((pre + i, pre + j) for i, j in mid)
    pairs.extend((n - suf + k, m - suf + k) for k in range(suf))
    return pairs


def _myers_core(a: list[int], b: list[int], max_d: int) -> list[tuple[int, int]] | None:
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    maxd = min(n + m, max_d)
    off = maxd + 1
    v = [0] * (2 * maxd + 3)
    trace: list[list[int]] = []
    for d in range(maxd + 1):
        trace.append(v[off - d - 1:off + d + 2])
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[off + k - 1] < v[off + k + 1]):
                x = v[off + k + 1]
            else:
                x = v[off + k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            v[off + k] = x
            if x >= n and y >= m:
                return _backtrack(trace, d, n, m)
    return None


def _backtrack(trace: list[list[int]], dmax: int, n: int, m: int) -> list[tuple[int, int]]:
    snakes: list[tuple[int, int, int]] = []  # (x, y, length) of each diagonal run, last first
    x, y = n, m
    for d in range(dmax, 0, -1):
        vs, base = trace[d], d + 1
        k = x - y
        pk = k + 1 if (k == -d or (k != d and vs[base + k - 1] < vs[base + k + 1])) else k - 1
        px = vs[base + pk]
        py = px - pk
        run = min(x - px, y - py)
        if run > 0:
            snakes.append((x - run, y - run, run))
        x, y = px, py
    if min(x, y) > 0:
        snakes.append((0, 0, min(x, y)))
    pairs: list[tuple[int, int]] = []
    for sx, sy, run in reversed(snakes):
        pairs.extend(zip(range(sx, sx + run), range(sy, sy + run), strict=True))
    return pairs


def _align(a: list[int], b: list[int], notes: list[str], depth: int = 0) -> list[tuple[int, int]]:
    """Matched index pairs of two signature sequences: Myers' shortest edit script while the edit
    distance stays small (its cost grows with its square), else patience anchors (signatures that
    occur exactly once on each side, kept in order) and the same again between the anchors."""
    pairs = _myers(a, b, _MAX_EDITS)
    if pairs is not None:
        return pairs
    anchors = _patience_anchors(a, b) if depth < 8 else []
    if not anchors:
        if len(a) * len(b) <= 4_000_000:
            _note(notes, "graphs differ in many places; some nodes were aligned by a coarser method (difflib)")
            sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
            return [(blk.a + k, blk.b + k) for blk in sm.get_matching_blocks() for k in range(blk.size)]
        _note(notes, "graphs differ in too many places to align some stretches; their nodes are reported "
                     "as removed and added")
        return []
    out: list[tuple[int, int]] = []
    prev_i = prev_j = -1
    for i, j in [*anchors, (len(a), len(b))]:
        if i - prev_i > 1 and j - prev_j > 1:
            lo_i, lo_j = prev_i + 1, prev_j + 1
            out.extend((lo_i + x, lo_j + y) for x, y in _align(a[lo_i:i], b[lo_j:j], notes, depth + 1))
        if i < len(a):
            out.append((i, j))
        prev_i, prev_j = i, j
    return out


def _patience_anchors(a: list[int], b: list[int]) -> list[tuple[int, int]]:
    """Longest increasing run of (i, j) over signatures unique in both sequences."""
    import bisect

    ca, cb = Counter(a), Counter(b)
    pos_b = {x: j for j, x in enumerate(b) if cb[x] == 1}
    cand = [(i, pos_b[x]) for i, x in enumerate(a) if ca[x] == 1 and x in pos_b]
    if not cand:
        return []
    tails: list[int] = []  # tails[k]: smallest j ending an increasing run of length k + 1
    tail_idx: list[int] = []
    back: list[int] = [-1] * len(cand)
    for n, (_, j) in enumerate(cand):
        k = bisect.bisect_left(tails, j)
        if k == len(tails):
            tails.append(j)
            tail_idx.append(n)
        else:
            tails[k] = j
            tail_idx[k] = n
        back[n] = tail_idx[k - 1] if k else -1
    run, n = [], tail_idx[-1]
    while n >= 0:
        run.append(cand[n])
        n = back[n]
    return run[::-1]


def _note(notes: list[str], msg: str) -> None:
    if msg not in notes:
        notes.append(msg)


align = _align
