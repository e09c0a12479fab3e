"""yexport: export PyTorch detection models to ONNX, prove parity, inspect and diff graphs.

The public API is imported lazily so that ``import exporter`` never pulls in torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "export": "exporter.api",
    "check_parity": "exporter.parity",
    "load_model": "exporter.models",
    "build_model": "exporter.models",
    "inspect": "exporter.graph.inspect",
    "snapshot": "exporter.graph.snapshot",
    "diff": "exporter.graph.diff",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
