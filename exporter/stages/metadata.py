"""metadata: how the file was made, in its own metadata_props (read back by `yexport check`)."""

from __future__ import annotations

import json

from exporter import __version__
from exporter.pipeline import Context


def layer_types(model) -> list[str] | None:
    """Module type per YAML layer index (e.g. ['Conv', 'Conv', 'C3', ...]) for block diagrams."""
    layers = getattr(model, "model", None)
    if layers is None:
        return None
    return [str(getattr(m, "type", type(m).__name__)) for m in layers]


def metadata(ctx: Context) -> Context:
    from exporter.stages import enabled_stages

    o = ctx.options
    src = ctx.source
    model = src.model
    props = {
        "yexport.version": __version__,
        "yexport.model": src.name,
        "yexport.source": f"{src.kind}:{src.source}",
        "yexport.weights": src.weights,
        "yexport.seed": str(o.seed),
        "yexport.stages": ",".join(s.name for s in enabled_stages(o)),
        "yexport.options": json.dumps(o.describe(), sort_keys=True),
        "yexport.training": "1" if o.training else "0",
        "yexport.keep_bn": "1" if o.bn_kept else "0",
        "yexport.head": o.head,
        "yexport.dynamic": o.dynamic or "none",
        "yexport.img": f"{o.img[0]},{o.img[1]}",
        "yexport.exporter": o.capture_exporter,
    }
    stride = getattr(model, "stride", None)
    if stride is not None:
        props["yexport.stride"] = ",".join(str(int(s)) for s in stride.tolist())
    names = getattr(model, "names", None)
    if names is not None:
        props["yexport.names"] = json.dumps(list(names.values()) if isinstance(names, dict) else list(names))
    types = layer_types(model)
    if types:
        props["yexport.layers"] = json.dumps(types)
    m = ctx.onnx
    m.producer_name, m.producer_version = "yexport", __version__
    existing = {p.key: p for p in m.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            m.metadata_props.add(key=k, value=v)
    return ctx.replace(onnx=m, change=f"{len(props)} metadata_props")
