"""mmcv's nms and roi_align under --amp's bf16: they have no bf16 kernels, adpe.mm runs them in fp32."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.mm


def test_nms_and_batched_nms_take_bf16_boxes_and_keep_their_dtype():
    from mmcv.ops import batched_nms, nms

    import adpe.mm  # noqa: F401  (the patch)

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    want_dets, want_keep = nms(boxes, scores, 0.5)
    dets, keep = nms(boxes.bfloat16(), scores.bfloat16(), 0.5)
    assert keep.tolist() == want_keep.tolist() == [0, 2] and dets.dtype == torch.bfloat16
    assert torch.allclose(dets.float(), want_dets, atol=0.1)
    dets, keep = batched_nms(boxes.bfloat16(), scores.bfloat16(), torch.tensor([0, 0, 1]),
                             dict(type="nms", iou_threshold=0.5))
    assert keep.tolist() == [0, 2] and dets.dtype == torch.bfloat16


def test_roi_align_takes_bf16_features_and_rois_and_passes_gradients():
    from mmcv.ops import RoIAlign

    import adpe.mm  # noqa: F401

    torch.manual_seed(0)
    features = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0.0, 1, 1, 6, 5]])
    layer = RoIAlign((3, 3), 1.0, sampling_ratio=2)
    want = layer(features, rois)
    x = features.bfloat16().requires_grad_()
    out = layer(x, rois.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), want, atol=0.05)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0
