"""The canonical graph that ``snapshot`` writes and ``diff`` compares: nodes in canonical order,
values named by position (``%in0`` graph inputs, ``%w3`` initializers, ``%12`` / ``%12.1`` outputs
of node 12). Built from an ONNX file by :mod:`exporter.graph._canon`, or read back from snapshot text
by :mod:`exporter.graph.snapshot_text`."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.graph.tensors import CInit

__all__ = ["CInit", "CNode", "CValue", "CanonGraph", "render_node"]


class CNode:
    """One node in canonical form: refs and rendered types of its inputs and outputs."""

    __slots__ = ("index", "op", "inputs", "input_types", "outputs", "output_types", "attrs", "name", "body",
                 "implicit")

    def __init__(self, index: int, op: str, inputs: list[str], input_types: list[str], outputs: list[str],
                 output_types: list[str], attrs: dict[str, str], name: str | None = None,
                 body: list[str] | tuple[str, ...] = (), implicit: list[str] | tuple[str, ...] = ()) -> None:
        self.index = index
        self.op = op  # "Conv", or "domain.Op" outside the default domain
        self.inputs = inputs  # canonical refs; "_" for an omitted optional input
        self.input_types = input_types
        self.outputs = outputs
        self.output_types = output_types
        self.attrs = attrs  # rendered values, sorted by name; shared between nodes: never mutate
        self.name = name  # original node name (ONNX files only; never in snapshots)
        self.body = body  # rendered subgraphs, if any
        self.implicit = implicit  # outer values its subgraphs read

    def __repr__(self) -> str:
        return f"CNode({render_node(self)!r})"


def _values(refs: list[str], types: list[str]) -> str:
    if len(refs) == 1 and types:
        r = refs[0]
        return f"{r}: {types[0]}" if r != "_" else "_"
    return ", ".join([f"{r}: {t}" if r != "_" else "_" for r, t in zip(refs, types, strict=False)])


def _attrs_text(attrs: dict[str, str]) -> str:
    return "  " + "  ".join([f"{k}={v}" for k, v in attrs.items()]) if attrs else ""


def render_node(n: CNode) -> str:
    return f"{_values(n.outputs, n.output_types) or '()'} = {n.op}({_values(n.inputs, n.input_types)})" \
           f"{_attrs_text(n.attrs)}"


@dataclass(slots=True)
class CValue:
    ref: str
    name: str | None
    type: str
    source: str | None = None  # for outputs: the ref that feeds it


@dataclass
class CanonGraph:
    kind: str  # "onnx" | "snapshot"
    path: str | None
    ir_version: int | None
    opsets: dict[str, int]
    metadata: dict[str, str]
    inputs: list[CValue]
    outputs: list[CValue]
    initializers: list[CInit]
    nodes: list[CNode]
    producer: str | None = None
    notes: list[str] = field(default_factory=list)
    #: the snapshot lines of the nodes, for a graph canonicalized as text only (``nodes`` is empty then)
    node_lines: list[str] | None = None
    #: ONNX files: the position in the file's node list of each node, in canonical order
    order: list[int] | None = None

    def init_by_ref(self) -> dict[str, CInit]:
        return {i.ref: i for i in self.initializers}

    def producers(self) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
        """(ref -> node index for first outputs, ref -> (node index, output slot) for the others): a
        first output, by far the most common, costs no tuple of its own."""
        first: dict[str, int] = {}
        other: dict[str, tuple[int, int]] = {}
        for n in self.nodes:
            outs = n.outputs
            if outs:
                first[outs[0]] = n.index
                for j in range(1, len(outs)):
                    other[outs[j]] = (n.index, j)
        first.pop("_", None)
        other.pop("_", None)
        return first, other
