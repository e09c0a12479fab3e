"""Detectors with data-dependent post-processing (torchvision's SSD, SSDlite, RetinaNet, FCOS, Faster
R-CNN and models built like them), recognised by their attributes, never by importing torchvision, and
the network part of each, which exports.

Their forward ends in post-processing whose sizes depend on the values (score thresholds, top-k, NMS,
per-image loops): the TorchScript tracer bakes in the example's branches and torch.export stops.
``--raw-head`` (``head="raw"``: the raw head outputs, no decode and no post-processing, as it means for
YOLOv5's Detect) exports :func:`network_part` instead:

- single-stage (``backbone``, ``head``, ``anchor_generator`` and ``postprocess_detections``): the
  transform's normalisation, the backbone and the head's raw outputs as the head returns them
  (torchvision: a dict of ``bbox_regression`` and ``cls_logits``, FCOS also ``bbox_ctrness``);
- two-stage (``backbone``, ``rpn`` with a ``head``, ``roi_heads``): the normalisation, the backbone's
  (FPN) features and the RPN head's objectness and box deltas per level. The ROI stage needs the
  proposals after NMS, so it is left out.

Left out in both: the transform's resize and padding (the input is the batch at the network's size),
the anchors (they depend only on the sizes: ``model.anchor_generator``), box decoding and NMS.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn


def _kind(model: Any) -> str:
    """'single-stage', 'two-stage' or '' for anything else."""
    if not isinstance(model, nn.Module):
        return ""
    if (all(isinstance(getattr(model, a, None), nn.Module) for a in ("backbone", "head"))
            and hasattr(model, "anchor_generator") and callable(getattr(model, "postprocess_detections", None))):
        return "single-stage"
    rpn = getattr(model, "rpn", None)
    if (isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(getattr(rpn, "head", None), nn.Module)
            and isinstance(getattr(model, "roi_heads", None), nn.Module)):
        return "two-stage"
    return ""


def post_processing(model: Any) -> str:
    """The post-processing construct of a detector built like torchvision's, in words (``""`` for any
    other model): what makes it impossible to export whole."""
    kind = _kind(model)
    name = type(model).__name__
    if kind == "single-stage":
        return f"{name}.postprocess_detections (score threshold, top-k and NMS per image)"
    if kind == "two-stage":
        return (f"{name}.rpn's proposal filtering (top-k and NMS per image) and {name}.roi_heads on those "
                "proposals")
    return ""


class _Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the detector's transform normalises (identity without one)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, transform: Any) -> None:
        super().__init__()
        mean, std = getattr(transform, "image_mean", None), getattr(transform, "image_std", None)
        self.on = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean if self.on else [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if self.on else [1.0]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.on else x


def _levels(features: Any) -> OrderedDict[str, torch.Tensor]:
    """A backbone's output as named levels (one tensor is level ``"0"``, as torchvision does)."""
    if isinstance(features, torch.Tensor):
        return OrderedDict([("0", features)])
    return OrderedDict(features)


class SingleStageNetwork(nn.Module):
    """Normalisation, backbone and head of a single-stage detector: the head's raw outputs."""

    backbone: nn.Module
    head: nn.Module

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.normalize = _Normalize(getattr(model, "transform", None))
        self.backbone = model.backbone
        self.head = model.head
        self.part = (f"{type(model).__name__} network part: normalisation, backbone, head (raw outputs); "
                     "resize, anchors, decode and NMS left out")

    def forward(self, images: torch.Tensor) -> Any:
        return self.head(list(_levels(self.backbone(self.normalize(images))).values()))


class TwoStageNetwork(nn.Module):
    """Normalisation, backbone and RPN head of a two-stage detector: the features per level and the RPN's
    raw objectness and box deltas per level."""

    backbone: nn.Module
    rpn_head: nn.Module

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.normalize = _Normalize(getattr(model, "transform", None))
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.part = (f"{type(model).__name__} network part: normalisation, backbone features, RPN head (raw "
                     "objectness and box deltas); resize, anchors, proposals (NMS) and the ROI stage left out")

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        features = _levels(self.backbone(self.normalize(images)))
        objectness, deltas = self.rpn_head(list(features.values()))
        return {"features": dict(features), "objectness": list(objectness), "bbox_deltas": list(deltas)}


def network_part(model: Any) -> nn.Module | None:
    """The exportable network of a detector with post-processing (its submodules shared, not copied), or
    None for any other model (the network part itself included). Its ``part`` says what it holds."""
    kind = _kind(model)
    if kind == "single-stage":
        return SingleStageNetwork(model).train(model.training)
    if kind == "two-stage":
        return TwoStageNetwork(model).train(model.training)
    return None
