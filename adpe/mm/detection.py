"""Cascade Mask R-CNN's RoI head trained as detectron2's ``CascadeROIHeads``, which the AdPE release ran (ViTDet's
``projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py``).

``roi_head=dict(type='AdPECascadeRoIHead', ...)`` builds a subclass of mmdet 3.3.0's ``CascadeRoIHead`` that
differs from it where detectron2 does (references: detectron2 ``detectron2/modeling/roi_heads/cascade_rcnn.py``,
``roi_heads.py`` and ``fast_rcnn.py`` at commit 02b5c4e; line numbers as there):

- **Equal stage losses, box-head input gradients x 1/num_stages.** detectron2 adds the stages' losses
  unweighted (``cascade_rcnn.py:178-185``) and scales the gradient flowing back from each stage's box head into
  the pooled features by ``1 / num_cascade_stages`` (``_ScaleGradient``, ``:20-28``; applied in ``_run_stage``,
  ``:268-276``, "equivalent to adding the losses among heads, but scale down the gradients on features"). The
  config sets ``stage_loss_weights=[1, 1, 1]``; the scaling is this head's ``_bbox_forward``.
- **One mask head**, trained on the first stage's sampled proposals (``forward``, ``:137-147``: ``_forward_mask``
  gets the proposals of ``label_and_sample_proposals``; ``roi_heads.py:836-838`` keeps their foreground) and
  applied at test to the final boxes (``:149-150``, ``forward_with_given_boxes``). mmdet builds one mask head
  per stage, trains each on its stage's samples and averages the three at test.
- **Stages 2..N relabel the previous stage's boxes, no re-sampling** (``_forward_box``, ``:167-176``;
  ``_create_proposals_from_boxes``, ``:278-299``; ``_match_and_label_boxes``, ``:208-256``): every box that the
  previous stage regressed (from all its sampled RoIs, the ground-truth boxes added as proposals in stage 1
  included), detached, clipped to the image and without empty boxes, is matched at the stage's IoU and labelled,
  with no ground truth added. mmdet drops the regressed ground-truth boxes (``BBoxHead.refine_bboxes``), adds the
  ground truth again and re-samples 512 RoIs. Here the refinement keeps every box as detectron2 does, and the
  stages' sampler is mmdet's ``PseudoSampler`` (every assigned box, positives and negatives, no ground truth
  added), which the head requires for stages 2..N. Stage 1 is detectron2's ``label_and_sample_proposals``
  (``roi_heads.py:220-``) as mmdet's ``RandomSampler(512, 0.25, add_gt_as_proposals=True)`` has it.
- Class-agnostic regression only, as detectron2's (``:97-98``).

The losses' normalisation is already detectron2's in mmdet's ``BBoxHead.loss``: cross-entropy averaged over the
sampled RoIs, the box loss summed over the foreground and divided by the number of RoIs (``fast_rcnn.py:344``,
``:463``). The box losses are L1 in the config (``FastRCNNOutputLayers(smooth_l1_beta=0.0)``, ``fast_rcnn.py:193``).

mmdet is imported when the head is first built, not when ``adpe.mm`` is (pretraining imports ``adpe.mm``): the
registered name is a builder function, as ``AdPEDetTTAModel`` in ``adpe/mm/inference.py``.
"""

from __future__ import annotations

import torch
from mmengine.registry import MODELS

from adpe.mm.lazy import registered_lazily


class ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale`` (detectron2's ``_ScaleGradient``,
    ``cascade_rcnn.py:20-28``)."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: A002 (torch's signature)
        ctx.scale = scale
        return input.view_as(input)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output * ctx.scale, None


@registered_lazily(MODELS, "AdPECascadeRoIHead")
def cascade_roi_head_class() -> type:
    """The head class, defined on first use so that mmdet is imported here and not when ``adpe.mm`` is."""
    from mmdet.models.roi_heads import CascadeRoIHead
    from mmdet.models.utils.misc import empty_instances, unpack_gt_instances
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.structures.bbox import bbox2roi, get_box_tensor
    from mmengine.model import ModuleList
    from mmengine.structures import InstanceData

    class AdPECascadeRoIHead(CascadeRoIHead):
        """mmdet's ``CascadeRoIHead`` trained as detectron2's ``CascadeROIHeads`` (module docstring).

        Takes ``CascadeRoIHead``'s arguments; ``mask_head`` and ``mask_roi_extractor`` are one config each (one
        mask head), every box head regresses class-agnostically, and ``train_cfg`` stages 2..N sample with
        ``PseudoSampler``. The box heads' input gradients are scaled by ``1 / num_stages`` in training.
        """

        def __init__(self, num_stages: int, stage_loss_weights=None, **kwargs) -> None:
            if stage_loss_weights is None:
                stage_loss_weights = [1.0] * num_stages
            super().__init__(num_stages=num_stages, stage_loss_weights=stage_loss_weights, **kwargs)
            if len(self.stage_loss_weights) != num_stages:
                raise ValueError(f"stage_loss_weights {list(self.stage_loss_weights)}: one weight per stage "
                                 f"({num_stages})")
            # detectron2 cascade_rcnn.py:97-98: "CascadeROIHeads only support class-agnostic regression now!"
            if not all(head.reg_class_agnostic for head in self.bbox_head):
                raise ValueError("AdPECascadeRoIHead regresses class-agnostically, as detectron2's Cascade: set "
                                 "reg_class_agnostic=True in every bbox_head")
            self.box_grad_scale = 1.0 / num_stages  # cascade_rcnn.py:274

        # ------------------------------------------------------------------------------------------ building
        def init_mask_head(self, mask_roi_extractor, mask_head) -> None:
            """One mask head (and, unless shared, one RoI extractor), as detectron2's ``StandardROIHeads`` mask
            branch that ``CascadeROIHeads`` inherits. Kept in ``ModuleLists`` of one, at index 0."""
            if isinstance(mask_head, list) or isinstance(mask_roi_extractor, list):
                raise ValueError("AdPECascadeRoIHead has one mask head, as detectron2's Cascade Mask R-CNN: give "
                                 "mask_head (and mask_roi_extractor) as one config, not a list per stage")
            self.mask_head = ModuleList([MMDET_MODELS.build(mask_head)])
            if mask_roi_extractor is not None:
                self.share_roi_extractor = False
                self.mask_roi_extractor = ModuleList([MMDET_MODELS.build(mask_roi_extractor)])
            else:
                self.share_roi_extractor = True
                self.mask_roi_extractor = self.bbox_roi_extractor  # stage 1's, at index 0

        def init_assigner_sampler(self) -> None:
            super().init_assigner_sampler()
            if self.train_cfg is None:
                return
            if len(self.train_cfg) != self.num_stages:
                raise ValueError(f"train_cfg has {len(self.train_cfg)} stages, the head {self.num_stages}")
            for stage, cfg in enumerate(self.train_cfg[1:], start=2):
                if cfg.sampler.get("type") != "PseudoSampler":
                    raise ValueError(
                        f"train_cfg.rcnn stage {stage}: sampler {cfg.sampler.get('type')!r}; AdPECascadeRoIHead "
                        "relabels every box of the previous stage without re-sampling, as detectron2 "
                        "(cascade_rcnn.py _match_and_label_boxes): use sampler=dict(type='PseudoSampler')")

        # ------------------------------------------------------------------------------------------ forward
        def _bbox_forward(self, stage: int, x, rois) -> dict:
            """mmdet's stage forward, with the pooled features' gradient scaled by 1 / num_stages in training
            (detectron2 ``_run_stage``, cascade_rcnn.py:268-276)."""
            extractor = self.bbox_roi_extractor[stage]
            bbox_feats = extractor(x[:extractor.num_inputs], rois)
            if self.training:
                bbox_feats = ScaleGradient.apply(bbox_feats, self.box_grad_scale)
            cls_score, bbox_pred = self.bbox_head[stage](bbox_feats)
            return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats)

        def _mask_forward(self, stage: int, x, rois) -> dict:
            if stage != 0:
                raise IndexError(f"AdPECascadeRoIHead has one mask head (stage 0), not one for stage {stage}")
            return super()._mask_forward(0, x, rois)

        @torch.no_grad()
        def _boxes_for_next_stage(self, stage: int, bbox_results: dict, batch_img_metas: list) -> list:
            """Every RoI of ``stage`` moved by its regression: detached, clipped to the image, empty boxes
            dropped (detectron2 ``predict_boxes`` then ``_create_proposals_from_boxes``, cascade_rcnn.py:175,
            :171, :288-295). Unlike mmdet's ``refine_bboxes`` the ground-truth proposals are kept."""
            head = self.bbox_head[stage]
            rois = bbox_results["rois"]
            bbox_pred = bbox_results["bbox_pred"]
            results_list = []
            for i, meta in enumerate(batch_img_metas):
                inds = rois[:, 0] == i
                # class-agnostic: the label is unused; the coder clips to img_shape (clip_border=True)
                boxes = get_box_tensor(head.regress_by_class(rois[inds, 1:], None, bbox_pred[inds], meta))
                boxes = boxes.detach()
                nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # Boxes.nonempty()
                results_list.append(InstanceData(bboxes=boxes[nonempty]))
            return results_list

        def loss(self, x, rpn_results_list, batch_data_samples) -> dict:
            """detectron2's ``CascadeROIHeads.forward`` in training (cascade_rcnn.py:137-147, 153-185)."""
            assert len(rpn_results_list) == len(batch_data_samples)
            batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = unpack_gt_instances(
                batch_data_samples)
            losses = {}
            results_list = rpn_results_list
            for stage in range(self.num_stages):
                self.current_stage = stage
                # Stage 1: label_and_sample_proposals (RandomSampler, ground truth added). Stages 2..N:
                # _match_and_label_boxes (the stage's IoU, PseudoSampler: every box, no ground truth added).
                sampling_results = []
                for i in range(len(batch_data_samples)):
                    results = results_list[i]
                    results.priors = results.pop("bboxes")
                    assign_result = self.bbox_assigner[stage].assign(
                        results, batch_gt_instances[i], batch_gt_instances_ignore[i])
                    sampling_results.append(self.bbox_sampler[stage].sample(
                        assign_result, results, batch_gt_instances[i], feats=[lvl[i][None] for lvl in x]))

                bbox_results = self.bbox_loss(stage, x, sampling_results)
                weight = self.stage_loss_weights[stage]
                for name, value in bbox_results["loss_bbox"].items():
                    losses[f"s{stage}.{name}"] = value * weight if "loss" in name else value

                # the one mask head, on the first stage's sampled positives (cascade_rcnn.py:140, 145)
                if stage == 0 and self.with_mask:
                    mask_results = self.mask_loss(0, x, sampling_results, batch_gt_instances)
                    losses.update(mask_results["loss_mask"])

                if stage < self.num_stages - 1:
                    results_list = self._boxes_for_next_stage(stage, bbox_results, batch_img_metas)
            return losses

        def predict_mask(self, x, batch_img_metas, results_list, rescale: bool = False) -> list:
            """The one mask head on the final boxes (cascade_rcnn.py:149-150), as mmdet's ``StandardRoIHead``
            predicts masks."""
            mask_rois = bbox2roi([res.bboxes for res in results_list])
            if mask_rois.shape[0] == 0:
                return empty_instances(batch_img_metas, mask_rois.device, task_type="mask",
                                       instance_results=results_list, mask_thr_binary=self.test_cfg.mask_thr_binary)
            mask_preds = self._mask_forward(0, x, mask_rois)["mask_preds"]
            mask_preds = mask_preds.split([len(res) for res in results_list], 0)
            return self.mask_head[0].predict_by_feat(mask_preds=mask_preds, results_list=results_list,
                                                     batch_img_metas=batch_img_metas, rcnn_test_cfg=self.test_cfg,
                                                     rescale=rescale)

        def forward(self, x, rpn_results_list, batch_data_samples) -> tuple:
            """``mode='tensor'``: the boxes' outputs as mmdet's, the one mask head's probabilities on the
            refined RoIs."""
            batch_img_metas = [sample.metainfo for sample in batch_data_samples]
            proposals = [res.bboxes for res in rpn_results_list]
            num_proposals_per_img = tuple(len(p) for p in proposals)
            rois, cls_scores, bbox_preds = self._refine_roi(x, bbox2roi(proposals), batch_img_metas,
                                                            num_proposals_per_img)
            results = (cls_scores, bbox_preds)
            if self.with_mask:
                mask_preds = self._mask_forward(0, x, torch.cat(rois))["mask_preds"]
                results += ([m.sigmoid().detach() for m in mask_preds.split(num_proposals_per_img, 0)],)
            return results

    return AdPECascadeRoIHead
