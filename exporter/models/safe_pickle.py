"""The allow-list unpickler: reads a pickled checkpoint without running code from it.

``find_class`` (:func:`resolve_global`) resolves only an allow-list of globals: the official YOLOv5 and
Ultralytics model and module classes, and ``torch.nn.modules.*`` classes, become *inert stand-ins*
(:class:`Inert`) that only keep their pickled state; torch's tensor rebuild functions, storages and
dtypes resolve to the real ones; ``collections.OrderedDict``, ``set``, pure paths and numpy arrays to real
containers. Anything else is refused by name. The pickle is bounded while it is read (bytes, opcodes,
nesting, expanded objects) and the object tree after (modules, depth).
"""

from __future__ import annotations

import contextvars
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    pass


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
MAX_NODES = 100_000  # modules in one pickled tree; guards against crafted DAGs
MAX_DEPTH = 64
# Bounds on the pickle itself, checked while it is read (before its objects exist). yolov5x with its EMA
# copy: data.pkl 0.4 MB, 166k pickle opcodes, about 200k objects, nesting under 40.
MAX_PICKLE_OPS = 4_000_000  # opcodes run: bounds the objects, the memo and the stack
MAX_PICKLE_DEPTH = 100  # nested MARKs while reading; nesting of the objects read
MAX_PICKLE_EXPANDED = 5_000_000  # objects once shared references are expanded ("billion laughs")
STORAGE_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("storage_limit", default=None)


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
    limit = STORAGE_LIMIT.get()
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
    __name__="exporter.models.safe_pickle",
    Unpickler=SafeUnpickler,
    load=_safe_pickle_load,
    UnpicklingError=pickle.UnpicklingError,
)


def one_line(text: str, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
