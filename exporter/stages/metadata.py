"""metadata: how the file was made, in its own metadata_props (read back by `yexport check`).

Two kinds of key, classified in one table in :mod:`exporter.identity` (:data:`RUN_RECORD_KEYS`,
:func:`is_run_record`):

- **graph identity**: what a consumer of the file reads and what defines the graph (model name,
  head and BatchNorm mode, image size, dynamic axes, stride, class names, the graph-defining
  options). ``yexport snapshot`` and ``yexport diff`` compare these by default.
- **run record**: how this particular run was made (parity options, stage list, source path,
  versions, seed). Kept in the file and the manifest; compared only with ``--include run-metadata``.

Beside the ``yexport.*`` keys the file carries ``stride`` and ``names`` in the form the YOLOv5
runtime (``DetectMultiBackend``) parses: ``int(meta["stride"])`` and
``ast.literal_eval(meta["names"])``.
"""

from __future__ import annotations

import json

from exporter import __version__
from exporter.identity import canonical_json, split_options
from exporter.pipeline import GRAPH, Condition, Context, Stage


def layer_types(model) -> list[str] | None:
    """Module type per YAML layer index (e.g. ['Conv', 'Conv', 'C3', ...]) for block diagrams."""
    layers = getattr(model, "model", None)
    if layers is None:
        return None
    return [str(getattr(m, "type", type(m).__name__)) for m in layers]


def class_names(model) -> dict[int, str] | None:
    """``{0: 'person', ...}`` from the model's ``names`` (dict or list, as a checkpoint has them),
    else ``{0: 'class0', ...}`` for its ``nc`` (a model built from a config names its classes by
    index only: '0', '1', ...)."""
    names = getattr(model, "names", None)
    if isinstance(names, dict) and names:
        found = {int(k): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}
    elif isinstance(names, (list, tuple)) and names:
        found = {i: str(v) for i, v in enumerate(names)}
    else:
        found = {}
    if found and any(v != str(k) for k, v in found.items()):
        return found
    nc = getattr(model, "nc", None) or len(found)
    return {i: f"class{i}" for i in range(int(nc))} if nc else None


def yolov5_props(model) -> dict[str, str]:
    """The keys YOLOv5's ``DetectMultiBackend`` reads: ``stride`` (max stride as an int) and
    ``names`` (a Python dict literal)."""
    props: dict[str, str] = {}
    from exporter.models.common import model_strides

    values = model_strides(model)
    if values:
        props["stride"] = str(max(values))
    names = class_names(model)
    if names is not None:
        props["names"] = repr(names)
    return props


def ultralytics_props(model, o) -> dict[str, str]:  # noqa: ANN001 - (nn.Module, ExportOptions)
    """For a YOLOv8/YOLO11 detector, the keys Ultralytics' ``AutoBackend`` reads besides ``stride`` and
    ``names``: ``task``, ``batch`` and ``channels`` (ints), ``imgsz``, ``args`` and ``end2end`` (Python
    literals). Nothing dated or versioned, so the file's identity stays the graph's."""
    from exporter.models.v8 import DetectionModel

    if not isinstance(model, DetectionModel):
        return {}
    return {
        "description": f"Ultralytics {model.generation} detection model exported by yexport",
        "task": "detect",
        "batch": str(o.batch),
        "imgsz": repr([int(o.img[0]), int(o.img[1])]),
        "channels": "3",
        "end2end": "False",
        "args": repr({"batch": o.batch, "half": bool(o.half), "dynamic": bool(o.dynamic), "nms": False,
                      "opset": o.opset}),
    }


def metadata(ctx: Context) -> Context:
    o = ctx.options
    src = ctx.source
    model = src.model
    graph_opts, run_opts = split_options(o.describe())
    props = {
        "yexport.version": __version__,
        "yexport.model": src.name,
        "yexport.source": f"{src.kind}:{src.source}",
        "yexport.weights": src.weights,
        "yexport.seed": str(o.seed),
        "yexport.stages": ",".join(ctx.plan),
        "yexport.graph_options": canonical_json(graph_opts),
        "yexport.run": canonical_json(run_opts),
        "yexport.training": "1" if o.training else "0",
        "yexport.keep_bn": "1" if o.bn_kept else "0",
        "yexport.head": o.head,
        "yexport.dynamic": o.dynamic or "none",
        "yexport.img": f"{o.img[0]},{o.img[1]}",
        # the exporter that made the graph (auto may have fallen back; capture_attempts in the manifest)
        "yexport.exporter": next((a["exporter"] for a in ctx.capture_attempts if a.get("ok")), o.capture_exporter),
    }
    if o.input_shapes:  # what parity feeds: names, example shapes, dtypes, integer bounds
        names = [i.name for i in ctx.graph.graph.input]
        props["yexport.inputs"] = json.dumps([{"name": n, "shape": list(s.shape), "dtype": s.dtype, "high": s.high}
                                              for n, s in zip(names, o.input_shapes, strict=False)])
    if getattr(src, "sha256", ""):
        props["yexport.source_sha256"] = src.sha256
    from exporter.models.common import model_strides

    strides = model_strides(model)
    if strides:
        props["yexport.stride"] = ",".join(map(str, strides))
    class_names = getattr(model, "names", None)
    if class_names is not None:
        props["yexport.names"] = json.dumps(list(class_names.values()) if isinstance(class_names, dict)
                                            else list(class_names))
    types = layer_types(model)
    if types:
        props["yexport.layers"] = json.dumps(types)
    props.update(yolov5_props(model))
    props.update(ultralytics_props(model, o))
    m = ctx.graph
    m.producer_name, m.producer_version = "yexport", __version__
    existing = {p.key: p for p in m.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            m.metadata_props.add(key=k, value=v)
    return ctx.replace(onnx=m, change=f"{len(props)} metadata_props")


IDENTIFIED = Condition("the yexport metadata", lambda ctx: ctx.onnx is not None and {
    "yexport.model", "yexport.graph_options"} <= {p.key for p in ctx.onnx.metadata_props})
STAGE = Stage("metadata", metadata, requires=(GRAPH,), ensures=(IDENTIFIED,))
