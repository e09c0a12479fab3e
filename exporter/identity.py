"""Graph identity: which of a file's metadata keys define the graph and which only record how the run
was made (see :mod:`exporter.stages.metadata`, which writes them). ``yexport snapshot`` and ``yexport
diff`` compare the graph identity by default, the run record only with ``--include run-metadata``.

Kept apart from the export stages so that the graph tools read it without importing the pipeline.
"""

from __future__ import annotations

import json
from typing import Any

from exporter.options import ExportOptions, graph_fields

# ExportOptions fields that shape the graph (declared with ``graph=True`` in exporter/options.py);
# every other field is a run-record option.
GRAPH_OPTION_FIELDS: frozenset[str] = graph_fields(ExportOptions)
# Keys that record how the run was made, not what the graph is.
RUN_RECORD_KEYS: frozenset[str] = frozenset({
    "yexport.version",  # the library version
    "yexport.source",  # kind:path of what the user gave (the path differs per checkout)
    "yexport.source_sha256",  # the checkpoint/config content (weights are compared as initializers)
    "yexport.weights",  # where the weights came from
    "yexport.seed",  # seed of the synthetic weights and parity inputs
    "yexport.stages",  # stage list (parity runs or not)
    "yexport.run",  # the run-record options (JSON): check, providers, require, atol, rtol, inputs, ...
})
# Keys whose JSON object mixes both kinds (files written before yexport.graph_options existed):
# split field by field with GRAPH_OPTION_FIELDS.
MIXED_KEYS: dict[str, tuple[str, str]] = {"yexport.options": ("yexport.graph_options", "yexport.run")}
RUN_METADATA = "run-metadata"  # the name of the run record for --include


def is_run_record(key: str) -> bool:
    """True for a metadata key that records how the run was made (excluded from graph identity)."""
    return key in RUN_RECORD_KEYS


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``ExportOptions.describe()`` -> (graph-defining fields, run-record fields)."""
    graph = {k: v for k, v in options.items() if k in GRAPH_OPTION_FIELDS}
    run = {k: v for k, v in options.items() if k not in GRAPH_OPTION_FIELDS}
    if not graph.get("half"):  # a float32 graph: absent, so its identity stays what it was before --half
        for k in ABSENT_GRAPH_OPTIONS:
            graph.pop(k, None)
    return graph, run


# graph options that a float32 graph's identity leaves out, with the value their absence stands for
ABSENT_GRAPH_OPTIONS: dict[str, Any] = {"half": False, "half_io": "float16"}


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys: equal objects, equal text."""
    return json.dumps(obj, sort_keys=True)


def graph_identity(meta: dict[str, str], *, include_run: bool = False) -> dict[str, str]:
    """The metadata that defines the graph (sorted by key); with ``include_run`` the run record too.

    A legacy ``yexport.options`` blob is split into ``yexport.graph_options`` (kept) and
    ``yexport.run`` (run record), so old and new files compare field for field."""
    out: dict[str, str] = {}
    for key, value in meta.items():
        if key in MIXED_KEYS:
            try:
                obj = json.loads(value)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                graph_key, run_key = MIXED_KEYS[key]
                graph, run = split_options(obj)
                out.setdefault(graph_key, canonical_json(graph))
                if include_run:
                    out.setdefault(run_key, canonical_json(run))
                continue
        if include_run or not is_run_record(key):
            out[key] = value
    return dict(sorted(out.items()))
