"""Detectors with data-dependent post-processing: recognised by their attributes (tiny modules built like
torchvision's SSD and Faster R-CNN, no torchvision), their network part exported with --raw-head and
checked, and a whole export that fails naming the post-processing and the switch."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

from exporter.models.detection import network_part, post_processing
from tests.conftest import user_module_fixture
from tests.pipeline.conftest import exit_and_output as run

DETECTORS = textwrap.dedent('''
    from collections import OrderedDict

    import torch
    from torch import nn


    class Transform(nn.Module):
        def __init__(self):
            super().__init__()
            self.image_mean, self.image_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

        def forward(self, x):
            return (x - torch.tensor(self.image_mean).view(1, 3, 1, 1)) / torch.tensor(self.image_std).view(1, 3, 1, 1)


    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.c2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())

        def forward(self, x):
            a = self.c1(x)
            return OrderedDict([("0", a), ("1", self.c2(a))])


    def flat(maps, k):
        return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, k) for m in maps], 1)


    class Head(nn.Module):
        def __init__(self, nc=3, na=2):
            super().__init__()
            self.nc = nc
            self.cls = nn.ModuleList(nn.Conv2d(c, na * nc, 3, padding=1) for c in (8, 16))
            self.box = nn.ModuleList(nn.Conv2d(c, na * 4, 3, padding=1) for c in (8, 16))

        def forward(self, feats):
            return {"bbox_regression": flat([b(f) for b, f in zip(self.box, feats)], 4),
                    "cls_logits": flat([c(f) for c, f in zip(self.cls, feats)], self.nc)}


    class Anchors(nn.Module):
        def forward(self, feats):
            return torch.cat([torch.rand(f.shape[2] * f.shape[3] * 2, 4) for f in feats])


    class TinySSD(nn.Module):
        """Built like torchvision's SSD: transform, backbone, head, anchor_generator, postprocess_detections."""

        def __init__(self):
            super().__init__()
            self.transform, self.backbone, self.head, self.anchor_generator = Transform(), Backbone(), Head(), Anchors()

        def postprocess_detections(self, out, anchors):
            dets = []
            for boxes, logits in zip(out["bbox_regression"], out["cls_logits"]):
                score, label = logits.softmax(-1).max(-1)
                keep = score > 0.4
                if keep.any():  # data-dependent, as a score threshold and NMS are
                    dets.append({"boxes": boxes[keep] + anchors[keep], "scores": score[keep], "labels": label[keep]})
            return dets

        def forward(self, images):
            feats = list(self.backbone(self.transform(images)).values())
            return self.postprocess_detections(self.head(feats), self.anchor_generator(feats))


    class RPNHead(nn.Module):
        def __init__(self, na=3):
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 3, padding=1)
            self.cls_logits, self.bbox_pred = nn.Conv2d(16, na, 1), nn.Conv2d(16, na * 4, 1)

        def forward(self, feats):
            hs = [self.conv(f).relu() for f in feats]
            return [self.cls_logits(h) for h in hs], [self.bbox_pred(h) for h in hs]


    class RPN(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.anchor_generator = RPNHead(), Anchors()


    class ROIHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.box_head = nn.Linear(16 * 7 * 7, 64)


    class FPN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Backbone()
            self.lateral = nn.Conv2d(8, 16, 1)

        def forward(self, x):
            f = self.body(x)
            return OrderedDict([("0", self.lateral(f["0"])), ("pool", f["1"])])


    class TinyRCNN(nn.Module):
        """Built like torchvision's GeneralizedRCNN: transform, backbone, rpn (with its head), roi_heads."""

        def __init__(self):
            super().__init__()
            self.transform, self.backbone, self.rpn, self.roi_heads = Transform(), FPN(), RPN(), ROIHeads()

        def forward(self, images):
            feats = self.backbone(self.transform(images))
            objectness, _ = self.rpn.head(list(feats.values()))
            scores = torch.cat([o.flatten(1) for o in objectness], 1)
            return scores[scores > 0]


    def ssd():
        return TinySSD()


    def rcnn():
        return TinyRCNN()
''')


detectors = user_module_fixture("detectors", DETECTORS)


def _module(path: Path) -> dict:
    ns: dict = {"__name__": "detectors"}
    exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102 - the test's own module text
    return ns


def test_network_part_by_duck_typing(detectors: Path) -> None:
    ns = _module(detectors)
    torch.manual_seed(0)
    ssd, rcnn = ns["ssd"]().eval(), ns["rcnn"]().eval()
    assert "TinySSD.postprocess_detections" in post_processing(ssd)
    assert "TinyRCNN.roi_heads" in post_processing(rcnn)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        net = network_part(ssd)
        assert net is not None
        want = ssd.head(list(ssd.backbone(ssd.transform(x)).values()))
        got = net(x)
        assert list(got) == ["bbox_regression", "cls_logits"]
        for k in want:
            torch.testing.assert_close(got[k], want[k])
        two = network_part(rcnn)
        assert two is not None
        out = two(x)
        assert list(out) == ["features", "objectness", "bbox_deltas"] and list(out["features"]) == ["0", "pool"]
        obj, deltas = rcnn.rpn.head(list(rcnn.backbone(rcnn.transform(x)).values()))
        for a, b in zip([*out["objectness"], *out["bbox_deltas"]], [*obj, *deltas], strict=True):
            torch.testing.assert_close(a, b)
    # the ROI stage is not part of the network: its parameters are not either
    assert not any(p is rcnn.roi_heads.box_head.weight for p in two.parameters())
    # anything else, and the network part itself, is left alone
    assert network_part(ssd.backbone) is None and network_part(net) is None and post_processing(net) == ""
    assert network_part(torch.nn.Conv2d(3, 3, 1)) is None


def test_raw_head_exports_the_ssd_network_and_checks_it(detectors: Path, tmp_path: Path) -> None:
    code, text = run("export", f"{detectors}:ssd", "--raw-head", "--input-shape", "1,3,64,64", "-o", str(tmp_path))
    assert code == 0, text
    assert "cpu: pass" in text
    proto = onnx.load(str(tmp_path / "detectors.onnx"))
    assert [o.name for o in proto.graph.output] == ["bbox_regression", "cls_logits"]
    assert [d.dim_value for d in proto.graph.output[1].type.tensor_type.shape.dim] == [1, (32 * 32 + 16 * 16) * 2, 3]
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    manifest = json.loads((tmp_path / "detectors.json").read_text())
    assert manifest["options"]["head"] == "raw"
    assert "TinySSD network part" in manifest["stages"][0]["changed"]
    assert manifest["parity"]
    # check rebuilds the network part from the factory (the file's yexport.head says raw)
    code, text = run("check", str(tmp_path / "detectors.onnx"), "--against", f"{detectors}:ssd")
    assert code == 0 and "pass" in text, text


def test_raw_head_exports_the_rcnn_features_and_rpn_head(detectors: Path, tmp_path: Path) -> None:
    code, text = run("export", f"{detectors}:rcnn", "--raw-head", "--input-shape", "1,3,64,64", "-o", str(tmp_path),
                     "--variants", "fused,dynamic")
    assert code == 0, text
    assert text.count("cpu: pass") == 2
    proto = onnx.load(str(tmp_path / "detectors-dynamic.onnx"))
    assert [o.name for o in proto.graph.output] == ["features.0", "features.pool", "objectness.0", "objectness.1",
                                                    "bbox_deltas.0", "bbox_deltas.1"]
    assert not any(n.op_type in ("Gemm", "MatMul") for n in proto.graph.node)  # no ROI box head


@pytest.mark.slow
def test_a_whole_export_that_fails_names_the_post_processing_and_the_switch(detectors: Path, tmp_path: Path) -> None:
    code, text = run("export", f"{detectors}:ssd", "--input-shape", "1,3,64,64", "-o", str(tmp_path),
                     "--exporter", "dynamo")
    assert code == 1
    line = text.strip().splitlines()[-1]
    assert "data-dependent" in line and "TinySSD.postprocess_detections" in line and "--raw-head" in line


def test_a_whole_export_that_captures_carries_a_note(detectors: Path, tmp_path: Path) -> None:
    """TorchScript traces the post-processing with the example's branch baked in: the file says so."""
    from exporter.api import export

    torch.manual_seed(0)
    (result,) = export(_module(detectors)["ssd"]().eval(), out_dir=tmp_path, img=(64, 64), exporter="torchscript",
                       check=False)
    note = next(n for n in result.notes if "post-processing" in n)
    assert "TinySSD.postprocess_detections" in note and "--raw-head" in note
    assert result.tracer_warnings


@pytest.mark.slow
def test_torchvision_ssdlite_network_part(tmp_path: Path) -> None:
    """The real torchvision SSDlite (random weights), its ops stubbed (tests/timm_models.py): the network
    part never calls NMS, so it exports and passes."""
    from tests.timm_models import import_timm

    try:
        import_timm()
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    except ImportError as exc:
        pytest.skip(f"torchvision not importable: {exc}")
    from exporter.api import export

    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    (result,) = export(model, out_dir=tmp_path, img=(160, 160), head="raw")
    assert result.ok, result.failures
    proto = onnx.load(str(result.path))
    assert [o.name for o in proto.graph.output] == ["bbox_regression", "cls_logits"]
    assert not any(n.op_type in ("NonMaxSuppression", "TopK", "NonZero") for n in proto.graph.node)
