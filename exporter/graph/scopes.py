"""Module scopes of ONNX nodes: which YOLOv5 layer (and which repeat inside it) a node came from.

The exporters record them in two ways: TorchScript in node names (``/model.2/m/m.0/cv1/conv/Conv``),
dynamo in node metadata (``pkg.torch.onnx.name_scopes`` / ``class_hierarchy``, or ``namespace``). The
block diagram, the diff's matching and summary, and parity's divergence search all read them here.
"""

from __future__ import annotations

import ast
import re
from typing import Any

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"
NAMESPACE_KEY = "namespace"

_LAYER_RE = re.compile(r"(?:^|\.)(\d+)$")
_SCOPE_RE = re.compile(r"^/?(model\.\d+)(?:/m)?(?:/(m\.\d+))?(?:/|$)")


def _literal_list(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


def node_scope(node: Any) -> tuple[str, int, str | None] | None:
    """``(scope, index, class name or None)`` of the top-level layer a node belongs to, or None.

    ``scope`` is the module path of the layer (``model.2``), ``index`` its position in the
    top-level ``Sequential`` and the class name (``C3``) is known only from dynamo metadata.
    """
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = _literal_list(meta[NAME_SCOPES_KEY]) if NAME_SCOPES_KEY in meta else None
    classes = _literal_list(meta[CLASS_HIERARCHY_KEY]) if CLASS_HIERARCHY_KEY in meta else None
    if scopes is None and NAMESPACE_KEY in meta:
        parts = [p.split(": ", 1) for p in meta[NAMESPACE_KEY].split("/")]
        scopes = [p[0].strip() for p in parts]
        classes = [p[1].strip() if len(p) > 1 else "" for p in parts]
    if scopes:
        for i, scope in enumerate(scopes):
            m = _LAYER_RE.search(scope)
            if m and scope:
                cls = classes[i].rsplit(".", 1)[-1] if classes and i < len(classes) and classes[i] else None
                return scope, int(m.group(1)), cls
    if node.name.startswith("/"):
        for part in node.name.split("/")[1:-1]:
            m = _LAYER_RE.search(part)
            if m:
                return part, int(m.group(1)), None
    return None


def module_scope(name: str | None) -> tuple[str, str | None] | None:
    """``('model.2', 'm.0')`` for ``/model.2/m/m.0/cv1/conv/Conv`` (or ``/model.2/m.0/...``), ``('model.9', None)`` for
    ``/model.9/cv1/conv/Conv``; None for a name without a YOLOv5 layer scope."""
    if not name:
        return None
    m = _SCOPE_RE.match(name)
    return (m.group(1), m.group(2)) if m else None
