"""Rebuilding a model from a checkpoint's contents: the pickled module tree (official YOLOv5, Ultralytics
YOLOv8/YOLO11, read as inert stand-ins), a plain state_dict with a config, or yexport's own format. Our
:class:`~exporter.models.yolo.Model` is rebuilt from the checkpoint's ``.yaml`` and the weights are loaded
with a strict key and shape check; nothing from the file is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import torch
from torch import nn

from exporter.errors import CheckpointError

if TYPE_CHECKING:
    from exporter.models.yolo import Model
from exporter.models.safe_pickle import MAX_DEPTH, MAX_NODES, TRUST_HINT, Inert, one_line

FORMAT = "yexport-1"


def _class_name(obj: Any) -> str:
    if isinstance(obj, Inert):
        return obj.pickled_as
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _is_module(obj: Any) -> bool:
    return isinstance(obj, (Inert, nn.Module))


class _Pickled:
    """A pickled model read as a module tree: class, attributes, state_dict, module classes, BN eps."""

    def __init__(self, root: Any) -> None:
        self.cls = _class_name(root)
        self.attrs: dict[str, Any] = dict(vars(root))
        self.state_dict: dict[str, torch.Tensor] = {}
        self.modules: dict[str, str] = {}  # path -> class name (last part)
        self.bn: dict[str, dict[str, Any]] = {}  # path -> eps/momentum
        self._nodes = 0
        self._walk(root, "", set(), 0)

    def _walk(self, obj: Any, prefix: str, ancestors: set[int], depth: int) -> None:
        where = prefix[:-1] or "the model"
        self._nodes += 1
        if id(obj) in ancestors or depth > MAX_DEPTH or self._nodes > MAX_NODES:
            raise CheckpointError(f"the pickled module tree is cyclic or too large at {where}")
        d = vars(obj)
        if prefix:
            self.modules[prefix[:-1]] = _class_name(obj).rsplit(".", 1)[-1]
        if _class_name(obj).endswith("BatchNorm2d"):
            self.bn[prefix[:-1]] = {k: d.get(k) for k in ("eps", "momentum")}
        skip = d.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            items = d.get(group) or {}
            if not isinstance(items, dict):
                raise CheckpointError(f"{where}: {group} is a {type(items).__name__}, not a dict")
            for name, t in items.items():
                if t is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{where}: {group[1:-1]} {name!r} is a {type(t).__name__}, not a tensor")
                self.state_dict[f"{prefix}{name}"] = t.detach()
        children = d.get("_modules") or {}
        if not isinstance(children, dict):
            raise CheckpointError(f"{where}: _modules is a {type(children).__name__}, not a dict")
        ancestors = ancestors | {id(obj)}
        for name, child in children.items():
            if child is None:
                continue
            if not _is_module(child):
                raise CheckpointError(f"{where}: submodule {name!r} is a {type(child).__name__}, not a module")
            self._walk(child, f"{prefix}{name}.", ancestors, depth + 1)


def _names_list(names: Any, nc: int) -> list[str] | None:
    if isinstance(names, dict):
        try:
            names = [names[k] for k in sorted(names)]
        except TypeError:
            return None
    if isinstance(names, (list, tuple)) and len(names) == nc:
        return [str(n) for n in names]
    return None


def _describe_keys(keys: list[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _conv_bn_prefixes(model: nn.Module) -> list[str]:
    from exporter.models.common import Conv

    return [f"{n}.bn" for n, m in model.named_modules() if isinstance(m, Conv) and hasattr(m, "bn")]


def _resize_to(model: nn.Module, sd: dict[str, torch.Tensor]) -> int:
    """Give Conv2d/BatchNorm2d layers the channel counts of ``sd`` (a channel-pruned model); returns how many."""
    changed = 0
    for name, m in list(model.named_modules()):
        w = sd.get(f"{name}.weight")
        if w is None or not name:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        new: nn.Module | None = None
        if isinstance(m, nn.Conv2d) and m.groups == 1 and w.dim() == 4 and tuple(w.shape) != tuple(m.weight.shape) \
                and tuple(w.shape[2:]) == tuple(m.weight.shape[2:]):
            new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation,  # type: ignore[arg-type]
                            bias=m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d) and w.dim() == 1 and w.shape[0] != m.num_features:
            new = nn.BatchNorm2d(w.shape[0], eps=m.eps, momentum=m.momentum)
        if new is not None:
            setattr(parent, attr, new)
            changed += 1
    return changed


def _restore(model: Any, p: Any, sd: dict[str, Any], path: Path, *, new_head: bool = False) -> dict[str, Any]:
    """Put a checkpoint's state into the model rebuilt from its config (YOLOv5 and Ultralytics alike):
    the stand-in tree must have the same module types, the weights load strictly (but the head with a
    new ``--nc``), BatchNorm eps/momentum, stride and names come from the checkpoint. Returns what
    :func:`_load_weights` noted."""
    ours = {n: type(m).__name__ for n, m in model.named_modules(remove_duplicate=False) if n}
    wrong = [f"{n} is {c} in the checkpoint but {ours[n]} in the rebuilt model" for n, c in p.modules.items()
             if n in ours and c != ours[n]]
    if wrong:
        raise CheckpointError(f"{path}: the checkpoint's layers differ from its config: {_describe_keys(wrong, 2)}")
    notes = _load_weights(model, sd, path, skip_head=new_head)
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and n in p.bn:
            eps, momentum = p.bn[n]["eps"], p.bn[n]["momentum"]
            if isinstance(eps, float):
                m.eps = eps
            if isinstance(momentum, float):
                m.momentum = momentum
    _check_stride(model, p.attrs.get("stride"), path)
    names = None if new_head else _names_list(p.attrs.get("names"), model.nc)
    if names:
        model.names = names
    return notes


def _load_weights(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, *, skip_head: bool = False,
                  resize: bool = False) -> dict[str, Any]:
    """Strictly load ``sd`` into ``model`` (fp16 -> fp32); fuses first when ``sd`` holds a fused model."""
    notes: dict[str, Any] = {}
    bn_prefixes = _conv_bn_prefixes(model)
    if bn_prefixes and not any(f"{p}.weight" in sd for p in bn_prefixes) \
            and any(f"{p[:-3]}.conv.bias" in sd for p in bn_prefixes):
        model.fuse()  # type: ignore[operator]
        notes["fused"] = True
    if resize:
        n = _resize_to(model, sd)
        if n:
            notes["resized_layers"] = n
    ours = model.state_dict()
    head = f"model.{len(model.model) - 1}.m." if skip_head else None  # type: ignore[arg-type]
    missing = [k for k in ours if k not in sd and not k.endswith("num_batches_tracked")
               and not (head and k.startswith(head))]
    unexpected = [k for k in sd if k not in ours]
    shapes = [f"{k} {list(sd[k].shape)} vs {list(ours[k].shape)}" for k in sd
              if k in ours and sd[k].shape != ours[k].shape and not (head and k.startswith(head))]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_describe_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_describe_keys(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model) {len(shapes)}: {_describe_keys(shapes, 3)}")
        raise CheckpointError(f"{path}: weights do not match the model built from the config: {'; '.join(parts)}")
    load = {}
    for k, v in ours.items():
        t = sd.get(k)
        if t is None or (head and k.startswith(head) and t.shape != v.shape):
            load[k] = v
        else:
            load[k] = t.to(v.dtype)  # fp16 -> fp32
    model.load_state_dict(load, strict=True)
    return notes


def _fill_anchors(cfg: dict[str, Any], sd: dict[str, torch.Tensor], stride: Any) -> dict[str, Any]:
    """A config with ``anchors: 3`` (anchors computed at training time) gets the checkpoint's anchors, in pixels."""
    if not isinstance(cfg.get("anchors"), int) or not isinstance(stride, torch.Tensor):
        return cfg
    keys = [k for k in sd if k.startswith("model.") and k.endswith(".anchors") and k.count(".") == 2]
    if not keys:
        return cfg
    anchors = sd[max(keys, key=lambda k: int(k.split(".")[1]))].float()
    if anchors.dim() != 3 or anchors.shape[0] != stride.numel():
        return cfg
    pixels = (anchors * stride.float().view(-1, 1, 1)).flatten(1)
    return {**cfg, "anchors": [[round(v, 4) for v in level] for level in pixels.tolist()]}


def _rebuild(cfg: dict[str, Any], nc: int | None, path: Path) -> Model:
    from exporter.errors import ModelError
    from exporter.models.build import build_model

    try:
        return build_model(cfg, nc=nc, seed=0)
    except ModelError as exc:
        raise CheckpointError(f"{path}: the model config stored in the checkpoint cannot be built: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the model config stored in the checkpoint cannot be built: "
                              f"{type(exc).__name__}: {one_line(str(exc), 160)}") from None


def _check_stride(model: nn.Module, stride: Any, path: Path) -> None:
    if stride is None:
        return
    theirs = [float(s) for s in (stride.tolist() if isinstance(stride, torch.Tensor) else stride)]
    ours = [float(s) for s in model.stride.tolist()]  # type: ignore[union-attr,operator]
    if theirs != ours:
        raise CheckpointError(f"{path}: checkpoint strides {theirs} differ from the rebuilt model's {ours}")


def _from_model_object(obj: Any, ckpt: dict[str, Any], path: Path, nc: int | None,
                       trusted: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild our Model from a pickled YOLOv5 model (inert stand-in or, when trusted, the real object)."""
    p = _Pickled(obj)
    if p.cls.startswith("ultralytics."):
        return _from_ultralytics(p, ckpt, path, nc, trusted)
    cfg = p.attrs.get("yaml")
    if not isinstance(cfg, dict):
        if trusted and isinstance(obj, nn.Module):
            fp16 = any(t.dtype == torch.float16 for t in obj.state_dict().values())
            return obj.float(), {"kind": "checkpoint", "format": "torch-module", "class": p.cls, "fp16": fp16}
        raise CheckpointError(f"{path}: the pickled {p.cls} has no YOLOv5 config (.yaml); a generic module can only "
                              f"be loaded with --trust-checkpoint ({TRUST_HINT})")
    sd = dict(p.state_dict)
    model = _rebuild(_fill_anchors(cfg, sd, p.attrs.get("stride")), nc, path)
    ckpt_nc = cfg.get("nc")
    new_head = nc is not None and nc != ckpt_nc
    detect = f"model.{len(model.model) - 1}."  # type: ignore[arg-type]
    sd.pop(f"{detect}anchor_grid", None)  # a v5.0 buffer (anchors in pixels); ours derives it
    notes = _restore(model, p, sd, path, new_head=new_head)
    if new_head:
        click.echo(f"yexport: warning: --nc {nc} differs from the checkpoint's {ckpt_nc}: the detection head convs "
                   "keep their initial weights", err=True)
    info: dict[str, Any] = {
        "kind": "checkpoint",
        "format": "yolov5-official",
        "class": p.cls,
        "generation": model.generation,
        "fp16": any(t.dtype == torch.float16 for t in sd.values()),
        "ema": ckpt.get("ema") is obj if ckpt else False,
    }
    if isinstance(ckpt.get("epoch"), int):
        info["epoch"] = ckpt["epoch"]
    if isinstance(ckpt.get("date"), str):
        info["date"] = ckpt["date"]
    if trusted:
        info["trusted"] = True
    info.update(notes)
    info["names"] = list(model.names)
    return model, info


def _from_ultralytics(p: _Pickled, ckpt: dict[str, Any], path: Path, nc: int | None,
                      trusted: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a YOLOv8/YOLO11 detector (:mod:`exporter.models.v8`) from a pickled Ultralytics model."""
    from exporter.errors import ModelError
    from exporter.models.common import Conv
    from exporter.models.v8 import DetectionModel

    cfg = p.attrs.get("yaml")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: the pickled {p.cls} has no model config (.yaml)")
    if p.cls.rsplit(".", 1)[-1] != "DetectionModel":
        raise CheckpointError(f"{path}: {p.cls} is not a detection model")
    if nc is not None and nc != cfg.get("nc"):
        raise CheckpointError(f"{path}: --nc {nc} differs from the checkpoint's {cfg.get('nc')}: a new head is not "
                              "supported for YOLOv8/YOLO11 checkpoints")
    try:
        model = DetectionModel(cfg)
    except ModelError as exc:
        raise CheckpointError(f"{path}: the model config stored in the checkpoint cannot be built: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the model config stored in the checkpoint cannot be built: "
                              f"{type(exc).__name__}: {one_line(str(exc), 160)}") from None
    # each Conv keeps the activation the checkpoint has (releases differ, e.g. SPPF.cv1)
    for name, m in model.named_modules():
        act = p.modules.get(f"{name}.act")
        if isinstance(m, Conv) and act in ("Identity", "SiLU") and type(m.act).__name__ != act:
            m.act = nn.Identity() if act == "Identity" else nn.SiLU()
    sd = dict(p.state_dict)
    notes = _restore(model, p, sd, path)
    info: dict[str, Any] = {
        "kind": "checkpoint",
        "format": "ultralytics",
        "class": p.cls,
        "generation": model.generation,
        "scale": model.yaml.get("scale") or "",
        "fp16": any(t.dtype == torch.float16 for t in sd.values()),
        "ema": ckpt.get("ema") is not None and ckpt.get("model") is None if ckpt else False,
    }
    for key in ("epoch", "date", "version"):
        if isinstance(ckpt.get(key), (int, str)) and not isinstance(ckpt.get(key), bool):
            info[key] = ckpt[key]
    if trusted:
        info["trusted"] = True
    info.update(notes)
    info["names"] = list(model.names)
    return model, info


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) \
            and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return None


def _from_state_dict(sd: dict[str, torch.Tensor], cfg: str | Path | None, path: Path,
                     nc: int | None) -> tuple[nn.Module, dict[str, Any]]:
    from exporter.models.build import build_model

    if cfg is None:
        raise CheckpointError(f"{path}: a plain state_dict ({len(sd)} tensors) holds no model config: give the "
                              "YAML it was trained from with --cfg")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    model = build_model(cfg, nc=nc, seed=0)
    notes = _load_weights(model, sd, path)
    info: dict[str, Any] = {"kind": "state_dict", "format": "state_dict", "cfg": str(cfg), "tensors": len(sd),
                            "fp16": any(t.dtype == torch.float16 for t in sd.values()), **notes}
    return model, info


def _from_yexport(ckpt: dict[str, Any], path: Path, nc: int | None) -> tuple[nn.Module, dict[str, Any]]:
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt.get('format')!r} is not {FORMAT!r} "
                              "(written by a newer yexport?)")
    cfg, sd = ckpt.get("yaml"), _tensor_dict(ckpt.get("state_dict"))
    if not isinstance(cfg, dict) or sd is None:
        raise CheckpointError(f"{path}: a {FORMAT} checkpoint needs 'yaml' (a dict) and 'state_dict' (tensors)")
    model = _rebuild(cfg, nc, path)
    new_head = nc is not None and nc != cfg.get("nc")
    notes = _load_weights(model, sd, path, skip_head=new_head, resize=True)
    _check_stride(model, ckpt.get("stride"), path)
    names = None if new_head else _names_list(ckpt.get("names"), model.nc)
    if names:
        model.names = names
    info: dict[str, Any] = {"kind": "checkpoint", "format": FORMAT, "generation": model.generation, **notes,
                            "names": list(model.names)}
    if ckpt.get("extra"):
        info["extra"] = ckpt["extra"]
    return model, info
