"""onnx's protobuf message classes (``ModelProto``, ``TensorProto``, ...) without ``import onnx``.

``import onnx`` also imports numpy and ml_dtypes, whose extension alone can take over a second of
CPU to start, while reading a file, walking its graph and hashing its tensors need only the
message classes. :func:`messages` therefore executes onnx's own generated ``onnx_ml_pb2`` module
(found with ``importlib.util.find_spec``, which does not run the package) under a private name.
The classes live in protobuf's default descriptor pool, so an ``import onnx`` later in the same
process finds the very same classes (``onnx.ModelProto is messages().ModelProto``): shape
inference, the checker and ``onnx.defs`` still work on what was parsed here, and import onnx
themselves where they are needed. If onnx is imported already, or its generated module cannot
be found or run this way, :func:`messages` is plainly ``onnx``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import Any

_PRIVATE_NAME = "exporter.graph._onnx_ml_pb2"


@functools.cache
def messages() -> Any:
    """A module holding onnx's message classes and enums (``ModelProto``, ``TensorProto``, ...)."""
    if "onnx" not in sys.modules:
        try:
            return _generated_module()
        except Exception:  # noqa: BLE001 - any surprise in onnx's layout: the plain import below
            sys.modules.pop(_PRIVATE_NAME, None)
    import onnx

    return onnx


def _generated_module() -> Any:
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("onnx is not installed as a package")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "onnx_ml_pb2.py")
        if os.path.isfile(path):
            break
    else:
        raise ImportError("onnx has no onnx_ml_pb2.py")
    mod_spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[_PRIVATE_NAME] = module
    mod_spec.loader.exec_module(module)
    module.ModelProto  # noqa: B018 - the classes must be there, or the fallback is taken
    module.TensorProto  # noqa: B018
    return module
