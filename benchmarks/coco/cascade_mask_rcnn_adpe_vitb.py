# Cascade Mask R-CNN + AdPE ViT-B/16 on COCO, as the AdPE release's README trains it: detectron2's
# detection/cascade_mask_rcnn_vitdet_b_100ep.py with `dataloader.train.total_batch_size=32 train.max_iter=400000`.
# ViTDet's recipe (_base_/vitdet_b.py) with a Cascade RoI head trained as detectron2's CascadeROIHeads
# (AdPECascadeRoIHead, adpe/mm/detection.py, which cites detectron2's lines): three stages (IoU 0.5 / 0.6 / 0.7,
# class-agnostic regression with detectron2's weights (10, 5), (20, 10), (30, 15), i.e. target_stds 1/w), each
# with ViTDet's 4conv+1fc box head with LN; equal stage losses with the box heads' input gradients x 1/3; one mask
# head with LN, trained on stage 1's sampled proposals and applied to the final boxes; stages 2-3 relabel every
# box of the previous stage (PseudoSampler) instead of re-sampling; L1 box losses in the RPN and the RoI heads
# (detectron2's smooth_l1_beta=0); 1000 RPN proposals per training image (detectron2's post_nms_topk).
# Schedule: 32 images per step, 400k iterations. detectron2 keeps the Mask R-CNN config's lr multiplier, which is
# defined on 184,375 updates, and stretches it to max_iter: warm-up 250 -> 542 iterations, steps 163,889 /
# 177,546 -> 355,556 / 385,185; lr 1e-4 x [0.5, 0.05, 0.005] as in mask_rcnn_adpe_vitb.py.
# Published: protocol coco_cascade (adpe/report/published.json; the paper's AdPE row).
_base_ = ['mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py', './_base_/vitdet_b.py']


def _rcnn_stage(iou, sampler):
    # detectron2's Matcher([iou], [0, 1], allow_low_quality_matches=False) (cascade_rcnn_vitdet_b_100ep.py:44-47)
    return dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=sampler, mask_size=28, pos_weight=-1, debug=False)


model = dict(
    data_preprocessor={{_base_.vitdet_preprocessor}},
    backbone={{_base_.vitdet_backbone}},
    neck={{_base_.vitdet_neck}},
    # detectron2's RPN: L1 box loss (rpn.py smooth_l1_beta=0.0; mmdet's cascade base has SmoothL1 beta 1/9)
    rpn_head=dict(num_convs=2, loss_bbox=dict(_delete_=True, type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='AdPECascadeRoIHead',
        stage_loss_weights=[1.0, 1.0, 1.0],  # detectron2 adds the stages' losses (cascade_rcnn.py:178-185)
        # A list replaces the base's list whole: each stage is spelt out, mmdet's cascade values with ViTDet's head.
        bbox_head=[
            dict(type='Shared4Conv1FCBBoxHead', in_channels=256, conv_out_channels=256, fc_out_channels=1024,
                 roi_feat_size=7, num_classes=80, norm_cfg={{_base_.norm_cfg}}, reg_class_agnostic=True,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=stds),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='L1Loss', loss_weight=1.0))  # FastRCNNOutputLayers smooth_l1_beta=0.0
            for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])],
        mask_head=dict(norm_cfg={{_base_.norm_cfg}})),  # one mask head (AdPECascadeRoIHead)
    train_cfg=dict(
        # detectron2's post_nms_topk train 1000 per image (mask_rcnn_fpn.py:51); pre-NMS 2000 per level as mmdet's
        rpn_proposal=dict(max_per_img=1000),
        rcnn=[
            # stage 1: label_and_sample_proposals, 512 RoIs, 25 % positives, ground truth added
            _rcnn_stage(0.5, dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                                  add_gt_as_proposals=True)),
            # stages 2-3: every box of the previous stage relabelled, none sampled or added (_match_and_label_boxes)
            _rcnn_stage(0.6, dict(type='PseudoSampler')),
            _rcnn_stage(0.7, dict(type='PseudoSampler')),
        ]),
)
effective_batch = 32
auto_scale_lr = dict(enable=False, base_batch_size=effective_batch)
train_dataloader = dict(batch_size=4)  # 8 GPUs x 4
optim_wrapper = dict(optimizer=dict(lr=1e-4 * 0.5))
max_iters = 400000
stretch = max_iters / 184375  # detectron2's LRMultiplier: the schedule is a function of iteration / max_iter
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=round(250 * stretch)),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[round(163889 * stretch), round(177546 * stretch)], gamma=0.1),
]
train_cfg = dict(max_iters=max_iters)
