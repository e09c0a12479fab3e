"""Load ONNX files (and only ONNX files) with one-line errors; never imports torch."""

from __future__ import annotations

from pathlib import Path

from exporter.errors import InputError


def load_onnx(path: str | Path, *, load_weights: bool = False):  # -> onnx.ModelProto
    """Parse ``path`` as an ONNX model.

    With ``load_weights=False`` initializers stored as external data stay unread (their shapes
    and dtypes are still known), so a model with gigabytes of weights loads in little memory.
    Raises :class:`InputError` for a missing, unreadable, truncated or non-ONNX file.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file (give the path of an .onnx file)")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not an ONNX file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not a readable ONNX model (corrupt, truncated or another format): {exc}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and not model.opset_import):
        raise InputError(f"{p}: not an ONNX model (no graph found; is it another format?)")
    if load_weights:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: external data missing or unreadable: {exc}") from None
    return model
