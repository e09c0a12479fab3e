"""Checkpoint loading that runs no code from the file, and yexport's own checkpoint format.

Official YOLOv5 checkpoints pickle the whole model object. Unpickling them normally imports the
``models`` package of the YOLOv5 source and calls whatever the pickle names. Here the pickle is read
by an unpickler whose ``find_class`` resolves only an allow-list of globals:

- the official model and module classes (``models.yolo.DetectionModel``, ``models.common.Conv``, ...)
  and ``torch.nn.modules.*`` classes become *inert stand-ins* that only keep their pickled state;
- torch's tensor rebuild functions, storages and dtypes resolve to the real ones;
- ``collections.OrderedDict``, ``set``, pure paths and numpy arrays resolve to real containers.

Anything else is refused by name. The stand-in tree is then read like a module tree (``_modules``,
``_parameters``, ``_buffers``), our :class:`~exporter.models.yolo.Model` is rebuilt from its ``.yaml``
and the weights are loaded with a strict key and shape check.
"""

from __future__ import annotations

import contextvars
import io
import os
import pickle
import sys
import types
import warnings
import zipfile
from collections import OrderedDict
from copy import deepcopy
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import click
import torch
from torch import nn

from exporter.errors import CheckpointError, InputError, YexportError
from exporter.io import regular_file

if TYPE_CHECKING:
    from exporter.models.yolo import Model

__all__ = ["FORMAT", "Inert", "load_checkpoint", "resolve_global", "safe_load", "save_checkpoint"]

FORMAT = "yexport-1"

# Classes of the official YOLOv5 source that the zoo can rebuild.
OFFICIAL_CLASSES: dict[str, frozenset[str]] = {
    "models.yolo": frozenset({"Model", "DetectionModel", "Detect"}),
    "models.common": frozenset({"Conv", "C3", "Bottleneck", "BottleneckCSP", "Concat", "SPPF", "SPP", "Focus"}),
}
# Classes of Ultralytics YOLOv8 / YOLO11 detection checkpoints (rebuilt by exporter.models.v8). Releases
# before 8.0.40 or so pickled the modules as ``ultralytics.nn.modules.X``, later ones by file.
_V8_BLOCKS = frozenset({"C2f", "C3k2", "C3k", "C3", "SPPF", "Bottleneck", "C2PSA", "PSABlock", "Attention", "DFL"})
_V8_CONV = frozenset({"Conv", "DWConv", "Concat"})
ULTRALYTICS_CLASSES: dict[str, frozenset[str]] = {
    "ultralytics.nn.tasks": frozenset({"DetectionModel"}),
    "ultralytics.nn.modules.conv": _V8_CONV,
    "ultralytics.nn.modules.block": _V8_BLOCKS,
    "ultralytics.nn.modules.head": frozenset({"Detect"}),
    "ultralytics.nn.modules": _V8_CONV | _V8_BLOCKS | {"Detect"},
    # training arguments kept on the model (model.args) and in the checkpoint: plain values
    "ultralytics.utils": frozenset({"IterableSimpleNamespace"}),
    "ultralytics.yolo.utils": frozenset({"IterableSimpleNamespace"}),
}
OFFICIAL_CLASSES.update(ULTRALYTICS_CLASSES)
TRUST_HINT = "use --trust-checkpoint only for files you trust"
_MAX_NODES = 100_000  # modules in one pickled tree; guards against crafted DAGs
_MAX_DEPTH = 64
# Bounds on the pickle itself, checked while it is read (before its objects exist). yolov5x with its EMA
# copy: data.pkl 0.4 MB, 166k pickle opcodes, about 200k objects, nesting under 40.
MAX_PICKLE_BYTES = 8 << 20  # data.pkl of a torch zip archive (also bounds torch's own weights_only reader)
MAX_PICKLE_OPS = 4_000_000  # opcodes run: bounds the objects, the memo and the stack
MAX_PICKLE_DEPTH = 100  # nested MARKs while reading; nesting of the objects read
MAX_PICKLE_EXPANDED = 5_000_000  # objects once shared references are expanded ("billion laughs")
_STORAGE_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("storage_limit", default=None)


class Inert:
    """Stand-in for a class named in a checkpoint: keeps the pickled state and runs none of its code."""

    pickled_as = "?"  # the global the pickle named, e.g. 'models.common.Conv'
    dump_patches = False  # read by torch's legacy loader

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state, slots = state
            if isinstance(slots, dict):
                self.__dict__.update(slots)
        if state is None:
            return
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.pickled_as}: unexpected pickled state {type(state).__name__}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<inert {self.pickled_as}>"


_INERT_CLASSES: dict[str, type[Inert]] = {}


def _inert_class(qualname: str) -> type[Inert]:
    cls = _INERT_CLASSES.get(qualname)
    if cls is None:
        short = qualname.rsplit(".", 1)[-1]
        cls = type(short, (Inert,), {"pickled_as": qualname, "__module__": __name__, "__qualname__": f"Inert[{qualname}]"})
        _INERT_CLASSES[qualname] = cls
    return cls


class RefusedGlobal(pickle.UnpicklingError):
    """Raised by the safe unpickler for a global outside the allow-list."""

    def __init__(self, qualname: str, why: str) -> None:
        self.qualname, self.why = qualname, why
        super().__init__(f"refusing to unpickle global {qualname!r} ({why})")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch's ``_rebuild_tensor_v2`` without the pickled backward hooks."""
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """torch's ``_rebuild_parameter`` without the pickled backward hooks."""
    return torch._utils._rebuild_parameter(data, requires_grad, OrderedDict())


def _rebuild_tensor(storage, storage_offset, size, stride):
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


_TORCH_FUNCTIONS = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
}
_TORCH_STORAGES = frozenset({
    "HalfStorage", "FloatStorage", "DoubleStorage", "BFloat16Storage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
})
_PATHS = {
    "pathlib.PosixPath": PurePosixPath, "pathlib.PurePosixPath": PurePosixPath,
    "pathlib.WindowsPath": PureWindowsPath, "pathlib.PureWindowsPath": PureWindowsPath,
}
_NUMPY = frozenset({
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.ndarray", "numpy.dtype",
})


def resolve_global(module: str, name: str) -> Any:
    """What the safe unpickler returns for the global ``module.name``; raises :class:`RefusedGlobal`."""
    qualname = f"{module}.{name}"
    if module in OFFICIAL_CLASSES:
        if name in OFFICIAL_CLASSES[module]:
            return _inert_class(qualname)
    elif module.startswith("torch.nn.modules."):
        cls = getattr(sys.modules.get(module), name, None)  # only modules torch has already imported
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return _inert_class(qualname)
    elif qualname in _TORCH_FUNCTIONS:
        return _TORCH_FUNCTIONS[qualname]
    elif module == "torch":
        if name in _TORCH_STORAGES:
            return torch.serialization.StorageType(name)
        if name == "Size":
            return torch.Size
        if name == "device":
            return torch.device
        if isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
    elif qualname == "collections.OrderedDict":
        return OrderedDict
    elif module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
        return set if name == "set" else frozenset
    elif qualname in _PATHS:
        return _PATHS[qualname]
    elif qualname in _NUMPY:
        import numpy

        if name == "ndarray":
            return numpy.ndarray
        if name == "dtype":
            return numpy.dtype
        core = getattr(numpy, "_core", None) or numpy.core
        return getattr(core.multiarray, name)
    if module.split(".")[0] == "ultralytics":
        raise RefusedGlobal(qualname, "an Ultralytics class yexport cannot rebuild (only YOLOv8/YOLO11 detection "
                                      "models are supported)")
    if module.split(".")[0] == "models":
        raise RefusedGlobal(qualname, "a YOLOv5 class the model zoo cannot rebuild; a trusted load with the "
                                      "YOLOv5 source on PYTHONPATH gives it as a generic module")
    raise RefusedGlobal(qualname, "not on the allow-list of checkpoint globals")


class PickleLimit(pickle.UnpicklingError):
    """Raised by the safe unpickler when a pickle exceeds a resource bound."""


def _bounded(op: Any, code: int) -> Any:
    """Wrap one opcode of the pure-Python unpickler with the resource checks."""
    mark, persid = code == pickle.MARK[0], code == pickle.BINPERSID[0]

    def run(self: SafeUnpickler) -> None:
        self._ops += 1
        if self._ops > MAX_PICKLE_OPS:
            raise PickleLimit(f"the pickle runs over {MAX_PICKLE_OPS:,} opcodes (a crafted or corrupt file)")
        if mark and len(self.metastack) >= MAX_PICKLE_DEPTH:
            raise PickleLimit(f"the pickle nests deeper than {MAX_PICKLE_DEPTH} levels")
        if persid and self.stack:
            _check_storage(self.stack[-1])
        op(self)

    return run


def _check_storage(pid: Any) -> None:
    """A storage may not declare more bytes than the file holds (torch would allocate them first)."""
    limit = _STORAGE_LIMIT.get()
    if limit is None or not isinstance(pid, tuple) or len(pid) < 5 or not isinstance(pid[4], int):
        return
    itemsize = getattr(getattr(pid[1], "dtype", None), "itemsize", 1)
    if pid[4] < 0 or pid[4] * itemsize > limit:
        raise PickleLimit(f"a tensor storage declares {pid[4]:,} elements, more than the file's {limit:,} bytes hold")


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """An unpickler that resolves globals only through :func:`resolve_global`, with bounds on the
    opcodes it runs, the nesting and the storage sizes declared (pure Python, so every opcode is seen)."""

    dispatch = {code: _bounded(op, code) for code, op in pickle._Unpickler.dispatch.items()}  # type: ignore[attr-defined]

    stack: list[Any]  # set by the pure-Python Unpickler's load()
    metastack: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ops = 0

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise RefusedGlobal(repr((module, name)), "not a module and name")
        return resolve_global(module, name)


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, Inert):
        return list(vars(obj).values())
    return []


def check_object_graph(root: Any) -> int:
    """How many objects ``root`` holds once shared references are expanded (memoised: linear in the
    objects); raises :class:`PickleLimit` for cycles, deep nesting or an expansion past the bound.
    What later reads the checkpoint (copies, reprs, JSON) would otherwise walk the expansion."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(root, 0, False)]
    while stack:
        obj, depth, done = stack.pop()
        key = id(obj)
        if done:
            active.discard(key)
            size = 1 + sum(sizes.get(id(c), 1) for c in _children(obj))
            if size > MAX_PICKLE_EXPANDED:
                raise PickleLimit(f"shared references in the pickle expand to over {MAX_PICKLE_EXPANDED:,} objects "
                                  "(a 'billion laughs' structure)")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        children = _children(obj)
        if not children:
            sizes[key] = 1
            continue
        if key in active:
            raise PickleLimit("the pickle holds a cyclic structure")
        if depth >= MAX_PICKLE_DEPTH:
            raise PickleLimit(f"the pickled objects nest deeper than {MAX_PICKLE_DEPTH} levels")
        active.add(key)
        stack.append((obj, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _safe_pickle_load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# What torch.load calls as ``pickle_module``: it subclasses ``Unpickler`` (its wrapper maps storage names,
# then defers to our find_class) and uses ``load`` for the small records of the legacy format.
SAFE_PICKLE = types.SimpleNamespace(
    __name__="exporter.models.checkpoint.safe_pickle",
    Unpickler=SafeUnpickler,
    load=_safe_pickle_load,
    UnpicklingError=pickle.UnpicklingError,
)


def _one_line(text: str, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _unreadable(path: Path, exc: BaseException) -> InputError:
    """A one-line error for a file torch cannot read at all."""
    msg = str(exc)
    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    if head[:2] == b"PK" or (head[:1] == b"\x80" and "magic number" not in msg):
        return InputError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {_one_line(msg, 160)})")
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
        token = _STORAGE_LIMIT.set(path.stat().st_size)
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
            _STORAGE_LIMIT.reset(token)


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
                f"(put the yolov5 repository on PYTHONPATH): {_one_line(str(exc), 160)}"
            ) from None
        raise CheckpointError(f"{path}: trusted load failed: {type(exc).__name__}: {_one_line(str(exc), 160)}") from None
    except YexportError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _sniff_trusted(path: Path) -> None:
    try:
        _sniff(path)
    except CheckpointError:  # TorchScript is fine when trusted
        pass


# ---------------------------------------------------------------------------------------------- reading


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
        if id(obj) in ancestors or depth > _MAX_DEPTH or self._nodes > _MAX_NODES:
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
    from exporter.models import build_model

    try:
        return build_model(cfg, nc=nc, seed=0)
    except ModelError as exc:
        raise CheckpointError(f"{path}: the model config stored in the checkpoint cannot be built: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the model config stored in the checkpoint cannot be built: "
                              f"{type(exc).__name__}: {_one_line(str(exc), 160)}") from None


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
                              f"{type(exc).__name__}: {_one_line(str(exc), 160)}") from None
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
    from exporter.models import build_model

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
