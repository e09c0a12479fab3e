"""Any nn.Module, acceptance table: timm classifiers, a small ViT, torchvision's DeepLabV3 (a dict
output) and torchvision's SSDlite and Faster R-CNN (their network part, ``head="raw"``: the
post-processing is data-dependent) x the export variants, pass or the one-line reason. Not part of
`make test`.

    .venv/bin/python bench/generic_models.py [--models resnet18,...] [--variants fused,...] [--out DIR]

Random weights (timm/torchvision as test dependencies only; torchvision's CUDA-built ops are stubbed by
tests/timm_models.py so it imports next to the CPU torch).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ["fused", "keep-bn", "simplify", "keep-bn+simplify", "dynamic", "int-shapes", "dynamic-all", "dynamo",
            "keep-bn+dynamo", "dynamic+dynamo"]
# int shapes are on by default wherever they are exact (static files, dynamic batch), and only YOLOv5's
# Detect reads them: for these models the int-shapes file is the fused file again, which the table checks
SAME_AS = {"int-shapes": "fused"}


def models() -> dict[str, tuple]:
    """name -> (builder, input size, option changes)."""
    from tests.timm_models import import_timm

    timm = import_timm()

    def tv_deeplab():
        from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

        return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5, aux_loss=True)

    def tv_ssdlite():
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)

    def tv_fasterrcnn():
        from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

        return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5)

    raw = {"head": "raw"}  # the network up to the post-processing (exporter/models/detection.py)
    return {
        "resnet18": (lambda: timm.create_model("resnet18", num_classes=10), (64, 64), {}),
        "mobilenetv3_small_100": (lambda: timm.create_model("mobilenetv3_small_100", num_classes=10), (64, 64), {}),
        "efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=10), (64, 64), {}),
        "vit_tiny_patch16 (img 96)": (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10,
                                                               img_size=96), (96, 96), {}),
        "deeplabv3_mobilenet_v3_large (dict out/aux)": (tv_deeplab, (64, 64), {}),
        "ssdlite320_mobilenet_v3_large (--raw-head, 320)": (tv_ssdlite, (320, 320), raw),
        "fasterrcnn_mobilenet_v3_large_320_fpn (--raw-head, 320)": (tv_fasterrcnn, (320, 320), raw),
    }


def main() -> None:
    import torch

    from exporter.api import export_one
    from exporter.errors import first_line
    from exporter.models import LoadedModel
    from exporter.options import ExportOptions, variant_options

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out or tempfile.mkdtemp(prefix="yexport-generic-"))
    table = models()
    names = [n for n in table if not args.models or any(n.startswith(m) for m in args.models.split(","))]
    variants = args.variants.split(",")
    print("| model | " + " | ".join(variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    reasons: list[str] = []
    for name in names:
        build, img, extra = table[name]
        torch.manual_seed(0)
        model = build().eval()
        lm = LoadedModel(model, name.split()[0], name, "module", "", "random (seed 0)")
        cells = []
        digests: dict[str, str] = {}
        for v in variants:
            opts = variant_options(ExportOptions(img=img, **extra), v)
            t0 = time.perf_counter()
            try:
                r = export_one(lm, opts, out / f"{lm.name}-{v}.onnx", v)
                exp = next((a["exporter"] for a in r.manifest_path and __import__("json").loads(
                    r.manifest_path.read_text())["capture_attempts"] if a["ok"]), "?")
                cell = ("pass" if r.ok else "FAIL") + f" ({exp}, {time.perf_counter() - t0:.0f}s)"
                digests[v] = hashlib.sha256(r.path.read_bytes()).hexdigest()
                same = SAME_AS.get(v)
                if same in digests:
                    cell += f" = {same}" if digests[same] == digests[v] else f" differs from {same}"
                if not r.ok:
                    why = "; ".join(r.failures) or (r.parity.summary() if r.parity is not None else "")
                    reasons.append(f"{name} {v}: {why}")
                    cell += f" [{len(reasons)}]"
            except Exception as exc:  # noqa: BLE001 - the table records every failure as its reason
                reasons.append(f"{name} {v}: {' '.join(first_line(exc).split())[:300]}")
                cell = f"error [{len(reasons)}]"
            cells.append(cell)
            print(f"  {name} {v}: {cell}", file=sys.stderr, flush=True)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for k, r in enumerate(reasons, 1):
        print(f"[{k}] {r}")


if __name__ == "__main__":
    main()
