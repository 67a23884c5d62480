"""Cascade Mask R-CNN trained as detectron2's CascadeROIHeads (adpe/mm/detection.py, issue 20 item 4): the
config's losses and proposals, equal stage weights with the box heads' input gradients x 1/3, one mask head on
stage 1's sampled positives and on the final boxes at test, stages 2-3 relabelling the previous stage's boxes."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet")
pytestmark = pytest.mark.mm

from mmdet.models.roi_heads import CascadeRoIHead  # noqa: E402
from mmdet.registry import DATASETS, MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.structures.bbox import bbox2roi, bbox_overlaps  # noqa: E402
from mmdet.structures.mask import BitmapMasks  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import adpe.mm  # noqa: E402,F401
from adpe.mm.detection import cascade_roi_head_class  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASCADE = ROOT / "benchmarks/coco/cascade_mask_rcnn_adpe_vitb.py"
DEMO = ROOT / "benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py"
SIZE = 128
CLASSES = 8


@pytest.fixture(autouse=True)
def _mmdet_scope():
    init_default_scope("mmdet")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (on a shared 2-core machine two threads ran these tests 5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_detector_cfg() -> Config:
    return copy.deepcopy(_tiny_detector_cfg())


@functools.cache
def _tiny_detector_cfg() -> Config:
    """The demo's tiny ViT and pyramid (64 channels) under the Cascade config's RPN, RoI head and train / test
    settings, the heads' widths cut to CPU size; every other setting is the Cascade config's."""
    cfg = Config.fromfile(DEMO)
    cascade = Config.fromfile(CASCADE).model
    for part in ("rpn_head", "roi_head", "train_cfg", "test_cfg"):
        cfg.model[part] = cascade[part]
    model = cfg.model
    model.backbone.init_cfg = None
    model.rpn_head.update(in_channels=64, feat_channels=64, anchor_generator=dict(
        type="AnchorGenerator", scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]))
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = roi.mask_roi_extractor.out_channels = 64
    for head in roi.bbox_head:
        head.update(in_channels=64, conv_out_channels=16, fc_out_channels=32, num_classes=CLASSES)
    roi.mask_head.update(in_channels=64, conv_out_channels=16, num_classes=CLASSES)
    model.train_cfg.rcnn[0].sampler.num = 128  # CPU-sized, as the demo's 64 (the config: 512)
    model.test_cfg.rcnn.score_thr = 0.0
    return cfg


def tiny_head(train: bool = True):
    model = tiny_detector_cfg().model
    head = MODELS.build(dict(**model.roi_head, train_cfg=model.train_cfg.rcnn, test_cfg=model.test_cfg.rcnn))
    head.init_weights()
    return head.train(train)


def head_inputs(seed: int = 0, images: int = 2, proposals: int = 120):
    """Random pyramid features (strides 4-64 of a 128^2 image), 3 ground-truth boxes with box masks per image, and
    proposals: jittered ground truth and random boxes."""
    g = torch.Generator().manual_seed(seed)
    x = tuple(torch.randn(images, 64, SIZE // s, SIZE // s, generator=g) for s in (4, 8, 16, 32, 64))
    samples, rpn_results = [], []
    for _ in range(images):
        xy = torch.rand(3, 2, generator=g) * 70
        gt = torch.cat([xy, xy + 16 + torch.rand(3, 2, generator=g) * 40], 1)
        masks = np.zeros((3, SIZE, SIZE), np.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, gt.round().int().tolist(), strict=True):
            m[y1:y2, x1:x2] = 1
        sample = DetDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), pad_shape=(SIZE, SIZE),
                                             batch_input_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=gt, labels=torch.randint(0, CLASSES, (3,), generator=g),
                                           masks=BitmapMasks(masks, SIZE, SIZE))
        samples.append(sample)
        near = gt.repeat(proposals // 6, 1) + torch.randn(proposals // 2, 4, generator=g) * 6
        xy = torch.rand(proposals - len(near), 2, generator=g) * 100
        far = torch.cat([xy, xy + 4 + torch.rand(len(xy), 2, generator=g) * 60], 1)
        boxes = torch.cat([near, far]).clamp(0, SIZE)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        rpn_results.append(InstanceData(bboxes=boxes, scores=torch.rand(len(boxes), generator=g)))
    return x, rpn_results, samples


def box_losses(losses: dict) -> torch.Tensor:
    return sum(v for k, v in losses.items() if k.startswith("s") and ("loss_cls" in k or "loss_bbox" in k))


# ------------------------------------------------------------------------------------------------ the config
def test_cascade_config_is_detectron2s_cascade():
    """Fails on the mmdet-based config: CascadeRoIHead, weights [1, 0.5, 0.25], SmoothL1 losses, 2000
    proposals, RandomSampler re-sampling in stages 2-3, three mask heads."""
    cfg = Config.fromfile(CASCADE)
    model = cfg.model
    assert model.roi_head.type == "AdPECascadeRoIHead"
    assert model.roi_head.stage_loss_weights == [1.0, 1.0, 1.0]
    # L1 box losses (detectron2's smooth_l1_beta = 0 in the RPN and FastRCNNOutputLayers)
    assert model.rpn_head.loss_bbox == dict(type="L1Loss", loss_weight=1.0)
    assert [h.loss_bbox for h in model.roi_head.bbox_head] == [dict(type="L1Loss", loss_weight=1.0)] * 3
    # 1000 RPN proposals per training image (post_nms_topk), 2000 per level before NMS (pre_nms_topk)
    assert model.train_cfg.rpn_proposal.max_per_img == 1000 and model.train_cfg.rpn_proposal.nms_pre == 2000
    stages = model.train_cfg.rcnn
    assert [s.assigner.pos_iou_thr for s in stages] == [0.5, 0.6, 0.7]
    assert all(s.assigner.neg_iou_thr == s.assigner.min_pos_iou == s.assigner.pos_iou_thr
               and not s.assigner.match_low_quality for s in stages)
    assert stages[0].sampler == dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                                     add_gt_as_proposals=True)
    assert [s.sampler.type for s in stages[1:]] == ["PseudoSampler"] * 2
    # the built heads (RPN and RoI head at full width, no backbone)
    from mmdet.models.losses import L1Loss

    head = MODELS.build(dict(**model.roi_head, train_cfg=model.train_cfg.rcnn, test_cfg=model.test_cfg.rcnn))
    assert isinstance(head, cascade_roi_head_class()) and isinstance(head, CascadeRoIHead)
    assert len(head.mask_head) == 1 and head.box_grad_scale == pytest.approx(1 / 3)
    assert all(isinstance(h.loss_bbox, L1Loss) and h.reg_class_agnostic for h in head.bbox_head)
    rpn = MODELS.build(dict(**model.rpn_head, train_cfg=model.train_cfg.rpn, test_cfg=model.test_cfg.rpn))
    assert isinstance(rpn.loss_bbox, L1Loss)


def test_head_refuses_what_detectron2s_cascade_does_not_do():
    model = tiny_detector_cfg().model
    base = dict(**model.roi_head, train_cfg=model.train_cfg.rcnn, test_cfg=model.test_cfg.rcnn)
    with pytest.raises(ValueError, match="one mask head"):
        MODELS.build({**base, "mask_head": [model.roi_head.mask_head] * 3})
    resampled = [model.train_cfg.rcnn[0]] * 3
    with pytest.raises(ValueError, match="PseudoSampler"):
        MODELS.build({**base, "train_cfg": resampled})
    specific = [dict(h, reg_class_agnostic=False) for h in model.roi_head.bbox_head]
    with pytest.raises(ValueError, match="class-agnostic"):
        MODELS.build({**base, "bbox_head": specific})


# ------------------------------------------------------------------------------------------ gradient scale
def test_box_head_input_gradient_is_scaled_by_one_third():
    """detectron2 cascade_rcnn.py:274: the pooled features' gradient from each stage's box head x 1/3; the heads'
    own parameter gradients are unscaled."""
    head = tiny_head()
    x, rpn_results, _ = head_inputs(proposals=60)
    rois = bbox2roi([r.bboxes for r in rpn_results])
    for stage in range(3):
        grads = []
        for forward in (head._bbox_forward, lambda *a: CascadeRoIHead._bbox_forward(head, *a)):  # ours, mmdet's
            feats = tuple(f.clone().requires_grad_() for f in x)
            head.zero_grad()
            out = forward(stage, feats, rois)
            (out["cls_score"].square().sum() + out["bbox_pred"].square().sum()).backward()
            grads.append(([f.grad for f in feats[:4]], [p.grad.clone() for p in head.bbox_head[stage].parameters()]))
        (ours, ours_params), (mmdet, mmdet_params) = grads
        assert mmdet[0].abs().sum() > 0  # 128^2 boxes pool from strides 4 and 8 (mmdet's finest_scale 56)
        for a, b in zip(ours, mmdet, strict=True):
            torch.testing.assert_close(a, b / 3)
        for a, b in zip(ours_params, mmdet_params, strict=True):
            torch.testing.assert_close(a, b)
        # forward values are the same, and no scaling at test
        head.eval()
        feats = tuple(f.clone().requires_grad_() for f in x)
        head._bbox_forward(stage, feats, rois)["cls_score"].square().sum().backward()
        feats_ref = tuple(f.clone().requires_grad_() for f in x)
        CascadeRoIHead._bbox_forward(head, stage, feats_ref, rois)["cls_score"].square().sum().backward()
        torch.testing.assert_close(feats[0].grad, feats_ref[0].grad)
        head.train()


def test_equal_stage_weights_and_one_third_gradient_through_the_loss():
    """Through the whole training loss: stage losses unweighted, and the box losses' gradient on the features is
    1/3 of an unscaled run's (same sampling: same seed)."""
    head = tiny_head()
    assert list(head.stage_loss_weights) == [1.0, 1.0, 1.0]
    runs = []
    for scale in (1 / 3, 1.0):
        head.box_grad_scale = scale
        x, rpn_results, samples = head_inputs()
        feats = tuple(f.requires_grad_() for f in x)
        torch.manual_seed(0)
        losses = head.loss(feats, rpn_results, samples)
        box_losses(losses).backward()
        runs.append((losses, [f.grad for f in feats[:4]]))
    (scaled, scaled_grads), (plain, plain_grads) = runs
    for key in scaled:
        torch.testing.assert_close(scaled[key], plain[key])
    for a, b in zip(scaled_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b / 3)
    # equal weights: each stage's loss is its box head's own loss, unweighted (mmdet's base: x 0.5, x 0.25)
    head.box_grad_scale = 1 / 3
    x, rpn_results, samples = head_inputs()
    torch.manual_seed(0)
    recorded = []
    bbox_loss = head.bbox_loss
    head.bbox_loss = lambda stage, *a: recorded.append(bbox_loss(stage, *a)) or recorded[-1]
    losses = head.loss(x, rpn_results, samples)
    for stage, result in enumerate(recorded):
        assert losses[f"s{stage}.loss_bbox"] == result["loss_bbox"]["loss_bbox"]
        assert losses[f"s{stage}.loss_cls"] == result["loss_bbox"]["loss_cls"]


# ------------------------------------------------------------------------------------------ mask head
def test_one_mask_head_trained_on_first_stage_sampled_positives():
    head = tiny_head()
    assert len(head.mask_head) == 1
    x, rpn_results, samples = head_inputs()
    first_stage, mask_rois = [], []
    sample = head.bbox_sampler[0].sample
    head.bbox_sampler[0].sample = lambda *a, **k: first_stage.append(sample(*a, **k)) or first_stage[-1]
    mask_forward = head._mask_forward
    head._mask_forward = lambda stage, feats, rois: mask_rois.append((stage, rois)) or mask_forward(stage, feats, rois)
    torch.manual_seed(0)
    losses = head.loss(x, rpn_results, samples)
    assert len(first_stage) == 2 and len(mask_rois) == 1  # one call, for both images
    stage, rois = mask_rois[0]
    assert stage == 0
    torch.testing.assert_close(rois, bbox2roi([res.pos_priors for res in first_stage]))
    assert sum(len(res.pos_priors) for res in first_stage) > 0
    assert [k for k in losses if "mask" in k] == ["loss_mask"] and math.isfinite(float(losses["loss_mask"]))


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flipped"])
def test_mask_head_applied_to_final_boxes_at_test(flip):
    """One mask forward, on the boxes the last stage predicts (mmdet's base averages three heads' masks and, for a
    flipped view, fails in merge_aug_masks: it flips a tensor with a negative step)."""
    head = tiny_head(train=False)
    x, rpn_results, samples = head_inputs(proposals=60)
    for sample in samples:
        sample.set_metainfo(dict(flip=flip, flip_direction="horizontal"))
    metas = [s.metainfo for s in samples]
    with torch.no_grad():
        boxes = head.predict_bbox(x, metas, [r.clone() for r in rpn_results], rcnn_test_cfg=head.test_cfg)
        calls = []
        mask_forward = head._mask_forward
        head._mask_forward = lambda stage, feats, rois: calls.append((stage, rois)) or mask_forward(stage, feats, rois)
        results = head.predict(x, rpn_results, samples, rescale=False)
    assert len(calls) == 1 and calls[0][0] == 0
    torch.testing.assert_close(calls[0][1], bbox2roi([b.bboxes for b in boxes]))
    for result, expected in zip(results, boxes, strict=True):
        torch.testing.assert_close(result.bboxes, expected.bboxes)
        assert result.masks.shape == (len(expected), SIZE, SIZE)


# ------------------------------------------------------------------------------------------ stages 2-3
def test_stages_two_and_three_relabel_the_previous_stage_boxes():
    """detectron2 _match_and_label_boxes: stage k + 1 gets every box that stage k regressed (clipped, non-empty,
    the ground-truth proposals' boxes included), labelled at its IoU, nothing sampled or added."""
    head = tiny_head()
    x, rpn_results, samples = head_inputs()
    recorded, sampled = [], {1: [], 2: []}
    bbox_loss = head.bbox_loss
    head.bbox_loss = lambda stage, feats, res: recorded.append((res, bbox_loss(stage, feats, res))) or recorded[-1][1]
    for stage in (1, 2):
        sample = head.bbox_sampler[stage].sample
        head.bbox_sampler[stage].sample = (
            lambda *a, _s=sample, _k=stage, **k: sampled[_k].append(_s(*a, **k)) or sampled[_k][-1])
    torch.manual_seed(0)
    head.loss(x, rpn_results, samples)
    assert len(recorded) == 3
    for stage in (1, 2):
        prev_results, prev = recorded[stage - 1]
        rois = prev["rois"]
        coder = head.bbox_head[stage - 1].bbox_coder
        for i, sample in enumerate(samples):
            inds = rois[:, 0] == i
            expected = coder.decode(rois[inds, 1:], prev["bbox_pred"][inds], max_shape=(SIZE, SIZE))
            expected = expected[(expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])]
            result = sampled[stage][i]
            got = result.priors
            assert len(got) == len(expected) == inds.sum() > 0  # every box of the previous stage, none added
            assert torch.cdist(got, expected, compute_mode="donot_use_mm_for_euclid_dist").min(1).values.max() < 1e-4
            assert torch.cdist(expected, got, compute_mode="donot_use_mm_for_euclid_dist").min(1).values.max() < 1e-4
            assert not result.pos_is_gt.any()
            # labelled at the stage's IoU, as Matcher([iou], [0, 1]) (priors: the positives, then the negatives)
            gt = sample.gt_instances.bboxes
            threshold = (0.5, 0.6, 0.7)[stage]
            assert bool((bbox_overlaps(result.pos_priors, gt).max(1).values >= threshold).all())
            assert bool((bbox_overlaps(result.neg_priors, gt).max(1).values < threshold).all())
            assert len(result.pos_priors) > 0 and len(result.neg_priors) > 0
        # the ground-truth proposals stage 1 sampled are among the regressed boxes that stage 2 gets
        if stage == 1:
            assert sum(int(r.pos_is_gt.sum()) for r in prev_results) > 0


# ------------------------------------------------------------------------------------------ training
def test_tiny_cascade_trains_a_step_on_coco_data(tmp_path):
    """The tiny detector under the Cascade config's heads: two optimiser steps through model.loss on generated
    COCO images; every stage's box losses, one mask loss, all finite."""
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper

    from adpe.tooling.demo_data import write_coco

    cfg = tiny_detector_cfg()
    data = write_coco(tmp_path / "coco", n_train=2, n_val=1, size=SIZE, seed=0)
    cfg.train_dataloader.dataset.data_root = f"{data}/"
    torch.manual_seed(0)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(2)])
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    assert isinstance(model.roi_head, cascade_roi_head_class())
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    for _ in range(2):
        losses = model(**model.data_preprocessor(batch, True), mode="loss")
        loss, log = model.parse_losses(losses)
        optim.update_params(loss)
    expected = {f"s{i}.{k}" for i in range(3) for k in ("loss_cls", "loss_bbox")}
    assert expected | {"loss_mask", "loss_rpn_cls", "loss_rpn_bbox"} <= set(log)
    assert not any(k.startswith("s") and "mask" in k for k in log)
    assert all(math.isfinite(float(v)) for v in log.values())
