# Cascade Mask R-CNN + AdPE ViT-B/16 on COCO, as the AdPE release's README trains it: detectron2's
# detection/cascade_mask_rcnn_vitdet_b_100ep.py with `dataloader.train.total_batch_size=32 train.max_iter=400000`.
# ViTDet's recipe (_base_/vitdet_b.py) with mmdet's Cascade RoI head: three stages (IoU 0.5 / 0.6 / 0.7,
# class-agnostic regression with detectron2's weights (10, 5), (20, 10), (30, 15), i.e. target_stds 1/w, as
# mmdet's cascade base has them), each with ViTDet's 4conv+1fc box head with LN; mask head with LN.
# Schedule: 32 images per step, 400k iterations. detectron2 keeps the Mask R-CNN config's lr multiplier, which is
# defined on 184,375 updates, and stretches it to max_iter: warm-up 250 -> 542 iterations, steps 163,889 /
# 177,546 -> 355,556 / 385,185; lr 1e-4 x [0.5, 0.05, 0.005] as in mask_rcnn_adpe_vitb.py.
_base_ = ['mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py', './_base_/vitdet_b.py']
model = dict(
    data_preprocessor={{_base_.vitdet_preprocessor}},
    backbone={{_base_.vitdet_backbone}},
    neck={{_base_.vitdet_neck}},
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        # A list replaces the base's list whole: each stage is spelt out, mmdet's cascade values with ViTDet's head.
        bbox_head=[
            dict(type='Shared4Conv1FCBBoxHead', in_channels=256, conv_out_channels=256, fc_out_channels=1024,
                 roi_feat_size=7, num_classes=80, norm_cfg={{_base_.norm_cfg}}, reg_class_agnostic=True,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=stds),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
            for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])],
        mask_head=dict(norm_cfg={{_base_.norm_cfg}})),
)
effective_batch = 32
auto_scale_lr = dict(enable=False, base_batch_size=32)
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
