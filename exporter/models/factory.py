"""The user's own model: ``pkg.module:factory`` or ``path/to/file.py:factory``.

The factory is a callable without arguments that returns the ``nn.Module``. Importing the named module
runs its code: that is what the user asked for by naming it, and the only place yexport runs code it did
not ship (checkpoints are never unpickled unless ``--trust-checkpoint``, and ``yexport check`` never
re-imports a factory named in a file's metadata). The factory runs under a seeded RNG, so the same
source and seed give the same initial weights; ``weights`` loads a state_dict over them with
``torch.load(weights_only=True)``, strictly by default.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import CheckpointError, InputError, ModelError, first_line

if TYPE_CHECKING:
    from torch import nn

    from exporter.models.build import LoadedModel

_ATTR = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_MODULE = re.compile(rf"^{_ATTR}$")
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "ema", "module")


def parse_factory(source: str) -> tuple[str, str] | None:
    """``(module or .py path, attribute)`` when ``source`` is factory syntax, else None.

    ``pkg.mod:build`` and ``path/to/file.py:build``; an existing file's own name (even with a colon) is
    never factory syntax."""
    if ":" not in source or Path(source).exists():
        return None
    where, _, attr = source.rpartition(":")
    if not where or not re.fullmatch(_ATTR, attr):
        return None
    if where.endswith(".py") or _MODULE.match(where):
        return where, attr
    return None


def _import(where: str) -> Any:
    """Import a module by dotted name (the current folder first, as ``python -m`` does) or a .py file
    (its folder first, so it can import its neighbours)."""
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise InputError(f"{where}: no such Python file")
        name = "yexport_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise InputError(f"{where}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
        return module
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise InputError(f"{where}: no module named {exc.name!r} (give pkg.module:factory importable from "
                             "here, or path/to/file.py:factory)") from None
        raise
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def build_from_factory(source: str, *, seed: int = 0) -> nn.Module:
    """Import the module of ``source`` and call its factory under a seeded RNG; the result must be an
    ``nn.Module``. Errors in the user's code are reported as model errors naming the source."""
    import torch
    from torch import nn

    parsed = parse_factory(source)
    if parsed is None:
        raise InputError(f"{source}: not pkg.module:factory or path/to/file.py:factory")
    where, attr = parsed
    with torch.random.fork_rng(devices=[]):  # the module's own import-time code draws from a seeded RNG too
        torch.manual_seed(seed)
        try:
            module = _import(where)
        except InputError:
            raise
        except Exception as exc:  # the user's module raised while importing
            raise ModelError(f"{where}: importing it raised {type(exc).__name__}: {first_line(exc)} "
                             "(--debug shows the traceback)") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{source}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        raise ModelError(f"{source}: {attr} is a module instance; name a function or class that builds it "
                         "(a factory), so each command gets a fresh model")
    if not callable(obj):
        raise ModelError(f"{source}: {attr} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = obj()
        except Exception as exc:
            raise ModelError(f"{source}: the factory raised {type(exc).__name__}: {first_line(exc)} "
                             "(--debug shows the traceback)") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{source}: the factory returned a {type(model).__name__}, not a torch nn.Module")
    return model


def _state_dict_of(obj: Any, path: Path) -> dict[str, Any]:
    import torch
    from torch import nn

    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise CheckpointError(f"--weights {path}: not a state_dict (a mapping of names to tensors, or one under "
                          f"{', '.join(repr(k) for k in STATE_DICT_KEYS)})")


def load_weights(model: nn.Module, weights: str | Path, *, strict: bool = True, trust: bool = False) -> str:
    """Load the state_dict in ``weights`` into ``model`` (in place); returns a description. Read with
    ``torch.load(weights_only=True)`` (tensors and plain containers only); ``trust`` unpickles fully."""
    import torch

    from exporter.io import regular_file

    path = Path(weights)
    if not path.exists():
        raise InputError(f"--weights {path}: no such file")
    regular_file(path, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        hint = "" if trust else ("; it is not a plain state_dict: save one with torch.save(model.state_dict(), f), "
                                 "or give --trust-checkpoint to unpickle it fully (runs code from the file)")
        raise CheckpointError(f"--weights {path}: cannot be loaded: {first_line(exc)[:200]}{hint}") from None
    state = _state_dict_of(obj, path)
    if any(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in model.state_dict()):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = " ".join(lines[1:3])[:300] if len(lines) > 1 else first_line(exc)[:300]
        raise CheckpointError(f"--weights {path} does not fit the model: {detail}"
                              + ("" if not strict else " (--no-strict-weights loads what fits)")) from None
    text = f"state_dict {path.name}"
    if not strict and (result.missing_keys or result.unexpected_keys):
        text += f" (not strict: {len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys)"
    return text


def load_factory(source: str, *, seed: int = 0, weights: str | Path | None = None, strict: bool = True,
                 trust_checkpoint: bool = False) -> LoadedModel:
    """A :class:`LoadedModel` from factory syntax (see the module docstring); in eval mode."""
    from exporter.models.build import LoadedModel, sha256_file

    where, attr = parse_factory(source) or ("", "")
    model = build_from_factory(source, seed=seed)
    described = f"factory's own initialisation (seed {seed})"
    sha = sha256_file(Path(where)) if where.endswith(".py") else ""
    if weights is not None:
        described = load_weights(model, weights, strict=strict, trust=trust_checkpoint)
        sha = sha256_file(Path(weights))
    name = Path(where).stem if where.endswith(".py") else where.rpartition(".")[2]
    return LoadedModel(model.eval(), name or attr, source, "factory", sha, described,
                       {"factory": attr, "class": type(model).__name__})
