"""Checkpoint loading that runs no code from the file, and yexport's own checkpoint format.

Official YOLOv5 checkpoints pickle the whole model object. Unpickling them normally imports the
``models`` package of the YOLOv5 source and calls whatever the pickle names. Here the file is checked
first (a torch zip archive or pickle, sizes, no TorchScript), then read by the allow-list unpickler of
:mod:`exporter.models.safe_pickle` (model and module classes become inert stand-ins; anything not on the
list is refused by name), and :mod:`exporter.models.restore` rebuilds our own
:class:`~exporter.models.yolo.Model` from the stand-in tree, with a strict key and shape check.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import torch
from torch import nn

from exporter.errors import CheckpointError, InputError, YexportError
from exporter.io import regular_file

if TYPE_CHECKING:
    pass
from exporter.models.restore import (
    FORMAT,
    _from_model_object,
    _from_state_dict,
    _from_yexport,
    _is_module,
    _tensor_dict,
)
from exporter.models.safe_pickle import (
    SAFE_PICKLE,
    STORAGE_LIMIT,
    TRUST_HINT,
    Inert,
    PickleLimit,
    RefusedGlobal,
    check_object_graph,
    one_line,
    resolve_global,
)

MAX_PICKLE_BYTES = 8 << 20  # data.pkl of a torch zip archive (also bounds torch's own weights_only reader)

__all__ = ["FORMAT", "Inert", "load_checkpoint", "resolve_global", "safe_load", "save_checkpoint"]


def _unreadable(path: Path, exc: BaseException) -> InputError:
    """A one-line error for a file torch cannot read at all."""
    msg = str(exc)
    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    if head[:2] == b"PK" or (head[:1] == b"\x80" and "magic number" not in msg):
        return InputError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {one_line(msg, 160)})")
    return InputError(f"{path}: not a PyTorch checkpoint (neither a torch zip archive nor a torch pickle)")


def _sniff(path: Path) -> bool:
    """Refuse what torch.load would hand to something else (TorchScript) or cannot be a checkpoint;
    returns whether the file is a torch zip archive."""
    regular_file(path, "checkpoint")  # missing, a FIFO or device, permission denied: said as such
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a checkpoint")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise _unreadable(path, exc) from None
        names = [i.filename for i in infos]
        big = [i for i in infos if i.filename.endswith(".pkl") and i.file_size > MAX_PICKLE_BYTES]
        if big:
            raise CheckpointError(f"{path}: {big[0].filename} is {big[0].file_size:,} bytes, over the "
                                  f"{MAX_PICKLE_BYTES:,} a checkpoint's pickle may have")
        if any(n.endswith("constants.pkl") for n in names):
            raise CheckpointError(f"{path}: a TorchScript archive, not a checkpoint; it can only be loaded as a "
                                  f"generic module with --trust-checkpoint ({TRUST_HINT})")
        if not any(n.endswith("data.pkl") for n in names):
            raise InputError(f"{path}: a zip archive without data.pkl, not a PyTorch checkpoint")
        return True
    return False


def safe_load(path: str | Path) -> Any:
    """Unpickle a checkpoint without running code from it.

    Plain tensor files load with ``torch.load(weights_only=True)``; anything else (an official
    YOLOv5 checkpoint) goes through the allow-list unpickler, so model objects come back as
    :class:`Inert` stand-ins. A global outside the allow-list raises :class:`CheckpointError`.
    """
    path = Path(path)
    is_zip = _sniff(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_zip:  # data.pkl is size-checked; a legacy file is read by the bounded unpickler only
            try:
                plain = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:
                pass  # not plain tensors: the allow-list unpickler decides
            else:
                try:
                    check_object_graph(plain)
                except PickleLimit as exc:
                    raise CheckpointError(f"{path}: refusing this checkpoint: {exc}") from None
                return plain
        token = STORAGE_LIMIT.set(path.stat().st_size)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=SAFE_PICKLE)
            check_object_graph(obj)
            return obj
        except RefusedGlobal as exc:
            raise CheckpointError(f"{path}: {exc}; {TRUST_HINT}") from None
        except PickleLimit as exc:
            raise CheckpointError(f"{path}: refusing this checkpoint: {exc}") from None
        except (RecursionError, MemoryError) as exc:
            raise CheckpointError(f"{path}: refusing this checkpoint: {type(exc).__name__} while reading it") from None
        except YexportError:
            raise
        except RuntimeError as exc:
            if "pickle_module" in str(exc) and os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
                raise CheckpointError(f"{path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which rules out the safe "
                                      "YOLOv5 unpickler; unset it to load this checkpoint") from None
            raise _unreadable(path, exc) from None
        except Exception as exc:
            raise _unreadable(path, exc) from None
        finally:
            STORAGE_LIMIT.reset(token)


def _trusted_load(path: Path) -> Any:
    """``torch.load(weights_only=False)``: runs whatever the file names."""
    _sniff_trusted(path)
    click.echo(f"yexport: warning: --trust-checkpoint: fully unpickling {path}; this runs any code the file "
               "names", err=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        name = getattr(exc, "name", None) or ""
        if name.split(".")[0] in ("models", "utils") or "models." in str(exc):
            raise CheckpointError(
                f"{path}: a trusted load needs the YOLOv5 source that wrote the checkpoint importable "
                f"(put the yolov5 repository on PYTHONPATH): {one_line(str(exc), 160)}"
            ) from None
        raise CheckpointError(f"{path}: trusted load failed: {type(exc).__name__}: {one_line(str(exc), 160)}") from None
    except YexportError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _sniff_trusted(path: Path) -> None:
    try:
        _sniff(path)
    except CheckpointError:  # TorchScript is fine when trusted
        pass


def load_checkpoint(path: str | Path, *, cfg: str | Path | None = None, nc: int | None = None,
                    trust: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint file: an official YOLOv5 ``.pt``, a yexport checkpoint, or a plain state_dict
    (with ``cfg``). Without ``trust`` no code from the file runs (see the module docstring); with it the
    file is fully unpickled and any ``nn.Module`` it holds is accepted. Returns ``(model, info)``.
    """
    path = Path(path)
    obj = _trusted_load(path) if trust else safe_load(path)
    if _is_module(obj):
        return _from_model_object(obj, {}, path, nc, trust)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a model, a checkpoint dict or a state_dict")
    if "format" in obj and str(obj.get("format", "")).startswith("yexport"):
        return _from_yexport(obj, path, nc)
    for key in ("ema", "model"):
        if _is_module(obj.get(key)):
            return _from_model_object(obj[key], obj, path, nc, trust)
    sd = _tensor_dict(obj)
    for key in ("state_dict", "model", "ema"):
        sd = sd or _tensor_dict(obj.get(key))
    if sd is not None:
        return _from_state_dict(sd, cfg, path, nc)
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(f"{path}: no model in this checkpoint: expected 'model'/'ema' holding a YOLOv5 model, or "
                          f"a state_dict of tensors (keys: {keys})")


# ---------------------------------------------------------------------------------------------- writing


def _check_plain(value: Any, where: str = "extra") -> None:
    """``extra`` must load with ``torch.load(weights_only=True)``: plain data and tensors only."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is not a str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not plain data (None, bool, int, float, str, list, dict, tensor)")


def save_checkpoint(model: nn.Module, path: str | Path, *, names: list[str] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a YOLOv5 ``Model``, possibly fused or channel-pruned) as a yexport checkpoint:
    ``{"format": "yexport-1", "yaml", "state_dict", "names", "nc", "stride", "extra"}``, loadable with
    ``torch.load(weights_only=True)``. The file is written to a temporary name and renamed into place.
    """
    cfg = getattr(model, "yaml", None)
    if not isinstance(cfg, dict):
        raise CheckpointError("save_checkpoint needs a YOLOv5 Model (with its config in .yaml)")
    extra = dict(extra or {})
    _check_plain(extra)
    nc = int(getattr(model, "nc", None) or cfg.get("nc") or 0)
    names = [str(n) for n in (names if names is not None else getattr(model, "names", []))]
    if len(names) != nc:
        raise CheckpointError(f"save_checkpoint: {len(names)} names for {nc} classes")
    stride = getattr(model, "stride", None)
    ckpt = {
        "format": FORMAT,
        "yaml": deepcopy(cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "names": names,
        "nc": nc,
        "stride": [float(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else None,
        "extra": extra,
    }
    from exporter.io import atomic_write

    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, buf.getvalue())
