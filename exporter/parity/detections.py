"""Detections after confidence threshold and NMS, compared with the float64 truth's: information beside
the verdict, never the verdict. NMS amplifies rounding (a score near the threshold, two boxes near the
IoU limit), and a small fault can leave a sparse image's detections unchanged, so the same figures for
PyTorch fp32 against float64 are printed as the baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CONF = 0.25
IOU = 0.45
MATCH_IOU = 0.5
MAX_DET = 300
MAX_NMS = 30000  # candidates kept before NMS, by score
MAX_WH = 7680.0  # class offset for class-aware NMS in one pass


def _xyxy(b: np.ndarray) -> np.ndarray:
    xy, wh = b[:, :2], b[:, 2:4] / 2
    return np.concatenate((xy - wh, xy + wh), 1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], 1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(pred: np.ndarray, conf: float = CONF, iou: float = IOU) -> np.ndarray:
    """One image's decoded rows ``(N, 5 + nc)`` -> detections ``(M, 6)``: x1, y1, x2, y2, score, class,
    as YOLOv5 does it (score = objectness x class probability, best class, class-aware greedy NMS)."""
    p = pred.astype(np.float64)
    p = p[p[:, 4] > conf]
    if not len(p):
        return np.zeros((0, 6))
    scores_all = p[:, 5:] * p[:, 4:5]
    cls = scores_all.argmax(1)
    score = scores_all[np.arange(len(p)), cls]
    keep = score > conf
    boxes, score, cls = _xyxy(p[keep]), score[keep], cls[keep].astype(np.float64)
    order = np.argsort(-score, kind="stable")[:MAX_NMS]
    boxes, score, cls = boxes[order], score[order], cls[order]
    shifted = boxes + cls[:, None] * MAX_WH
    alive = np.ones(len(boxes), bool)
    kept = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) >= MAX_DET:
            break
        rest = np.nonzero(alive[i + 1:])[0] + i + 1
        if rest.size:
            alive[rest[_iou(shifted[i], shifted[rest]) > iou]] = False
    k = np.array(kept, int)
    return np.concatenate((boxes[k], score[k, None], cls[k, None]), 1)


@dataclass
class Agreement:
    """How detections ``b`` agree with the truth's ``a``."""

    truth: int
    got: int
    matched: int  # truth detections with a counterpart of IoU >= 0.5
    class_changes: int  # matched pairs whose class differs
    max_box_shift: float  # px, over matched pairs: largest coordinate difference
    max_score_diff: float

    def words(self) -> str:
        if self.truth == 0 and self.got == 0:
            return "0 detections"
        return (f"{self.matched} of {self.truth} match within {self.max_box_shift:.2g} px"
                + (f" ({self.got - self.matched} extra)" if self.got > self.matched else "")
                + (f", {self.class_changes} class change(s)" if self.class_changes else ""))


def agree(a: np.ndarray, b: np.ndarray) -> Agreement:
    """Greedy matching by IoU, highest-scoring truth detection first."""
    used = np.zeros(len(b), bool)
    matched = changes = 0
    shift = score = 0.0
    for det in a:
        if not len(b):
            break
        ious = np.where(used, -1.0, _iou(det[:4], b[:, :4]))
        j = int(np.argmax(ious))
        if ious[j] < MATCH_IOU:
            continue
        used[j] = True
        matched += 1
        changes += int(det[5] != b[j, 5])
        shift = max(shift, float(np.abs(det[:4] - b[j, :4]).max()))
        score = max(score, float(abs(det[4] - b[j, 4])))
    return Agreement(len(a), len(b), matched, changes, shift, score)


@dataclass
class DetectionReport:
    """One input (all images of its batch): the file's and PyTorch fp32's detections against float64's."""

    conf: float
    iou: float
    onnx: Agreement
    torch: Agreement
    baseline: str = "PyTorch fp32"

    def line(self) -> str:
        if self.onnx.truth == 0 and self.onnx.got == 0 and self.torch.got == 0:
            return (f"detections (conf {self.conf:g}, IoU {self.iou:g}): none at this threshold in float64, ONNX "
                    f"or {self.baseline} (random weights give few confident boxes; try --images with real photos)")
        return (f"detections (conf {self.conf:g}, IoU {self.iou:g}): {self.onnx.words()}, max score diff "
                f"{self.onnx.max_score_diff:.1e}; {self.baseline} itself: {self.torch.words()}")

    def to_dict(self) -> dict[str, object]:
        return {"conf": self.conf, "iou": self.iou, "onnx": asdict(self.onnx), "torch": asdict(self.torch),
                "line": self.line()}


def _sum(parts: list[Agreement]) -> Agreement:
    return Agreement(sum(p.truth for p in parts), sum(p.got for p in parts), sum(p.matched for p in parts),
                     sum(p.class_changes for p in parts), max((p.max_box_shift for p in parts), default=0.0),
                     max((p.max_score_diff for p in parts), default=0.0))


def compare_detections(onnx: np.ndarray, fp32: np.ndarray, f64: np.ndarray, conf: float = CONF,
                       iou: float = IOU, baseline: str = "PyTorch fp32") -> DetectionReport:
    """Decoded outputs ``(bs, N, 5 + nc)`` of the file, PyTorch fp32 and float64, image by image."""
    o, t = [], []
    for i in range(f64.shape[0]):
        truth = nms(f64[i], conf, iou)
        o.append(agree(truth, nms(onnx[i], conf, iou)))
        t.append(agree(truth, nms(fp32[i], conf, iou)))
    return DetectionReport(conf, iou, _sum(o), _sum(t), baseline)
