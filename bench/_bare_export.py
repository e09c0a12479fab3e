"""The floor for ``yexport export``: load a model and call ``torch.onnx.export`` once, nothing else.

Same model source (``exporter.models.load_model``), same preparation as the pipeline's default
(eval, Conv+BN fused, decoded Detect head), same exporter (TorchScript, opset 18, constant folding).

    python bench/_bare_export.py MODEL OUT.onnx
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

OPSET = 18


def prepared(model):
    """``model`` in eval mode, fused, with the decoded Detect output (in place; returns it)."""
    from exporter.models.common import Detect

    model = model.float().eval()
    if hasattr(model, "fuse"):
        model.fuse()
    for m in model.modules():
        if isinstance(m, Detect):
            m.output, m.int_shapes = "decode", False
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def bare_export(model, example, out) -> None:
    """One ``torch.onnx.export`` call with the pipeline's capture settings (``out``: path or BytesIO)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), out, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=["images"], output_names=["output0"])


def main() -> None:
    from exporter.models import load_model
    from exporter.models.weights import synthetic_images

    name, out = sys.argv[1], Path(sys.argv[2])
    model = prepared(load_model(name).model)
    example = synthetic_images(1, (640, 640), 0)
    bare_export(model, example, str(out))


if __name__ == "__main__":
    main()
