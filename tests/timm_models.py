"""timm (test dependency only) on this machine's CPU torch.

PyPI's torchvision wheels are CUDA builds whose ``_C.so`` cannot load next to the CPU torch wheel, and
``import torchvision`` then fails registering fake kernels for ops that were never defined
(``operator torchvision::nms does not exist``). timm imports torchvision for a few helpers; defining the
two op schemas first (no kernels: nothing here calls them) lets both import. torchvision's detection
models import the same way: the network part that ``--raw-head`` exports never calls ``nms`` (a whole
SSD does, and its capture then fails on the kernel-less op). Used by the tests and by
``bench/generic_models.py``; nothing in ``exporter/`` imports torchvision or timm.
"""

from __future__ import annotations

from typing import Any

_LIB: Any = None


def define_torchvision_ops() -> None:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` where torchvision's own library did not."""
    global _LIB
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - raises when the op does not exist
        return
    except (AttributeError, RuntimeError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")  # kept alive: the definitions last as long as it
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_timm() -> Any:
    """``timm``, or ImportError when it (or torchvision) is not installed or cannot be imported."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        define_torchvision_ops()
    except ImportError:
        pass
    try:
        import timm
    except RuntimeError as exc:  # torchvision half-imported before the ops were defined
        raise ImportError(f"timm cannot be imported here: {exc}") from None
    return timm
