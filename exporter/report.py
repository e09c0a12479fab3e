"""One table from many export manifests (the ``.json`` beside each ``.onnx``): ``yexport report``.

A zoo exported across CI jobs (one matrix job per model) leaves one manifest per file; this merges
them into one page: model, variant, nodes, BatchNorm, Shape/Gather, size, parity and detection
verdicts per provider, seconds. Each manifest is validated against its file (the sha256 of the
``.onnx`` beside it); JSON files that are not manifests are skipped with a note. Tolerant of
missing keys: manifests of older and newer yexport versions mix. Never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import InputError

__all__ = ["ReportRow", "collect", "render"]

COLUMNS = ("file", "model", "variant", "nodes", "BatchNorm", "Shape+Gather", "size", "parity", "detections", "seconds",
           "file check")


@dataclass
class ReportRow:
    manifest: str
    file: str
    model: str
    variant: str
    nodes: int | None
    batchnorm: int | None
    shape_gather: int | None
    bytes: int | None
    parity: str
    detections: str
    seconds: float | None
    file_check: str  # "ok", "sha256 mismatch", "file missing", "no sha256"
    providers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.file_check == "ok"

    def cells(self) -> tuple[str, ...]:
        return (self.file, self.model, self.variant, _int(self.nodes), _int(self.batchnorm), _int(self.shape_gather),
                _human(self.bytes), self.parity, self.detections,
                "" if self.seconds is None else f"{self.seconds:.1f}", self.file_check)

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "file": self.file, "model": self.model, "variant": self.variant, "nodes": self.nodes,
                "batchnorm": self.batchnorm, "shape_gather": self.shape_gather, "bytes": self.bytes,
                "parity": self.parity, "providers": self.providers, "detections": self.detections,
                "seconds": self.seconds, "file_check": self.file_check}


def _int(x: int | None) -> str:
    return "" if x is None else str(x)


def _human(n: int | None) -> str:
    from exporter.tables import size_text

    return "" if n is None else size_text(n)


def _manifest_files(paths: list[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.json") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]  # type: ignore[func-returns-value]


def _is_manifest(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("file"), str) and ("sha256" in obj or "stages" in obj) \
        and ("model" in obj or "options" in obj)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _provider_cells(parity: Any) -> tuple[str, list[dict[str, Any]]]:
    """'cpu: pass, cuda: not run' and one dict per provider from the manifest's parity object."""
    if not isinstance(parity, dict):
        return "not checked", []
    provs = parity.get("providers")
    if isinstance(provs, dict):  # {name: {...}} in some older manifests
        provs = [{"requested": k, **(v if isinstance(v, dict) else {})} for k, v in provs.items()]
    rows: list[dict[str, Any]] = []
    cells: list[str] = []
    for p in provs if isinstance(provs, list) else []:
        if not isinstance(p, dict):
            continue
        name = str(p.get("requested") or p.get("provider") or p.get("name") or "?")
        ran = p.get("ran", True)
        passed = p.get("passed", p.get("ok"))
        if ran is False:
            verdict = "not run" + (" (required)" if p.get("required") else "")
        elif passed is None:
            verdict = "?"
        else:
            verdict = "pass" if passed else "FAIL"
        rows.append({"provider": name, "ran": ran, "passed": passed, "verdict": verdict})
        cells.append(f"{name}: {verdict}")
    if not cells:
        passed = parity.get("passed", parity.get("ok"))
        return ("pass" if passed else "FAIL") if passed is not None else "?", rows
    return ", ".join(cells), rows


def _detection_cell(parity: Any) -> str:
    """Detections verdict: ``parity.detections`` if present, else the per-case detections of each
    provider (``matched/truth`` boxes of the file against float64); '' when none were compared."""
    if not isinstance(parity, dict):
        return ""
    det = parity.get("detections")
    if isinstance(det, dict):
        if "passed" in det:
            return "pass" if det["passed"] else "FAIL"
        return _agreement(det) or ""
    if isinstance(det, bool):
        return "pass" if det else "FAIL"
    cells = []
    provs = parity.get("providers")
    for p in provs if isinstance(provs, list) else []:
        if not isinstance(p, dict):
            continue
        found = [c.get("detections") for c in p.get("cases") or [] if isinstance(c, dict)]
        parts: list[dict[str, Any]] = [d for d in found if isinstance(d, dict)]
        if not parts:
            continue
        truth = sum(int((d.get("onnx") or {}).get("truth", 0)) for d in parts)
        matched = sum(int((d.get("onnx") or {}).get("matched", 0)) for d in parts)
        changes = sum(int((d.get("onnx") or {}).get("class_changes", 0)) for d in parts)
        name = p.get("requested") or p.get("provider") or "?"
        text = f"{matched}/{truth} boxes" if truth else "no boxes"
        cells.append(f"{name}: {text}" + (f", {changes} class changes" if changes else ""))
    return ", ".join(cells)


def _agreement(d: dict[str, Any]) -> str | None:
    onnx = d.get("onnx")
    if isinstance(onnx, dict) and "truth" in onnx:
        return f"{onnx.get('matched', 0)}/{onnx['truth']} boxes"
    return None


def _row(path: Path, m: dict[str, Any]) -> ReportRow:
    model = m.get("model")
    name = model.get("name") if isinstance(model, dict) else model
    ops = m.get("ops") if isinstance(m.get("ops"), dict) else None
    onnx = path.with_name(str(m["file"]))
    if not onnx.is_file():
        check = "file missing"
    elif not m.get("sha256"):
        check = "no sha256"
    else:
        check = "ok" if _sha256(onnx) == m["sha256"] else "sha256 mismatch"
    parity, providers = _provider_cells(m.get("parity"))
    seconds = m.get("seconds")
    return ReportRow(
        manifest=str(path), file=str(m["file"]), model=str(name or Path(str(m["file"])).stem), variant=str(m.get("variant") or ""),
        nodes=m.get("nodes") if isinstance(m.get("nodes"), int) else None,
        batchnorm=int(ops.get("BatchNormalization", 0)) if ops is not None else None,
        shape_gather=int(ops.get("Shape", 0)) + int(ops.get("Gather", 0)) if ops is not None else None,
        bytes=m.get("bytes") if isinstance(m.get("bytes"), int) else (onnx.stat().st_size if onnx.is_file() else None),
        parity=parity, detections=_detection_cell(m.get("parity")),
        seconds=float(seconds) if isinstance(seconds, (int, float)) else None, file_check=check, providers=providers)


def collect(paths: list[str | os.PathLike[str]]) -> tuple[list[ReportRow], list[str]]:
    """Rows of every manifest under ``paths`` (folders are searched recursively), and notes on the
    JSON files skipped."""
    rows: list[ReportRow] = []
    notes: list[str] = []
    for p in _manifest_files(paths):
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            notes.append(f"skipped {p}: not readable JSON ({type(exc).__name__})")
            continue
        if not _is_manifest(obj):
            notes.append(f"skipped {p}: not a yexport manifest")
            continue
        rows.append(_row(p, obj))
    return rows, notes


def render(rows: list[ReportRow], notes: list[str], fmt: str = "text", color: bool = False,
           width: int | None = None) -> str:
    """The table as text (``color``/``width`` for a terminal: see :func:`exporter.tables.render`),
    GitHub markdown or JSON."""
    if fmt == "json":
        return json.dumps({"rows": [r.to_dict() for r in rows], "notes": notes}, indent=2) + "\n"
    from exporter.tables import render as render_table

    right = ("nodes", "BatchNorm", "Shape+Gather", "size", "seconds")
    if fmt == "markdown":
        return render_table(COLUMNS, [r.cells() for r in rows], fmt="markdown", right=right, notes=notes)
    return render_table(COLUMNS, [r.cells() for r in rows], right=right, notes=notes, color=color, width=width)
