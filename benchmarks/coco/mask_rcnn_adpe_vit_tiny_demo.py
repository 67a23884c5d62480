# Tiny Mask R-CNN for the demo and tests: tiny ViT (192-d, 4 blocks, windows of 4 with global blocks 1 and 3)
# on the generated COCO-format folder (data/demo/coco: COCO-like aspect ratios, short side 96-160, polygon masks;
# resized to fit 128^2 and padded to it). The ViT-B recipe's backbone, simple pyramid, RPN and data pipeline, with
# CPU-sized heads and schedule.
_base_ = ['./mask_rcnn_adpe_vitb.py']
data_root = 'data/demo/coco/'
# One process, 8 images per step, no accumulation (the ViT-B recipe's effective batch is not the demo's);
# --auto-scale-lr would scale the lr against the demo's own batch.
effective_batch = None
auto_scale_lr = dict(enable=False, base_batch_size=8)
image_size = (128, 128)
model = dict(
    data_preprocessor=dict(pad_size_divisor=image_size[0]),  # the ViT-B recipe's square padding at this size
    # pos_embed_size: the demo's pretraining size, as the ViT-B recipe's 224
    backbone=dict(size='tiny', img_size=image_size, pos_embed_size=112, window_size=4, global_blocks=(1, 3),
                  drop_path_rate=0.0),
    # CPU-sized heads. Measured: with the ViT-B recipe's LayerNorm'd pyramid and 4conv1fc head at 64 channels
    # and lr 2e-3, the classifier still called every RoI background after 150 steps on one fixed batch (demo AP
    # 0.2). Plain biased convs, mmdet's standard 2-fc box head, a 2-conv mask head and lr 4e-4 reach AP ~30
    # from a random init in 200 iterations.
    neck=dict(in_channels=192, out_channels=64, norm_cfg=None),
    rpn_head=dict(in_channels=64, feat_channels=64,
                  anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(type='Shared2FCBBoxHead', in_channels=64, fc_out_channels=256, num_classes=8),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, num_convs=2, conv_out_channels=64, num_classes=8, norm_cfg=None)),
    # Fewer proposals and sampled RoIs than the ViT-B recipe: 128^2 images hold a handful of objects.
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200), rcnn=dict(sampler=dict(num=64))),
    # A low score threshold keeps the few early detections of a short CPU run in the AP computation.
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(score_thr=0.001, max_per_img=10)),
)
metainfo = dict(classes=('circle', 'square', 'triangle', 'star', 'ring', 'cross', 'ellipse', 'hexagon'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.5, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size, recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# Loading a batch takes about 15 ms, so it runs in the main process. InfiniteSampler, because with mmdet's
# DefaultSampler mmengine's iteration loop sleeps 2 s at every epoch end (here every 20 iterations).
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        sampler=dict(type='InfiniteSampler', shuffle=True), dataset=dict(
    data_root=data_root, metainfo=metainfo, filter_cfg=dict(filter_empty_gt=True, min_size=4),
    pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
# --tta: the ViT-B recipe's flip, at this image size and with the model's max_per_img
tta_model = dict(tta_cfg=dict(max_per_img=10))
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=image_size, keep_ratio=True)],
        [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
        [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                                               'flip', 'flip_direction'))],
    ]),
]
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=4e-4, weight_decay=0.05))
# 200 steps reach AP ~30 from a random init; 100, validated and saved once at the end, keep make demo within its
# time budget (README, "Demo"). The lr drops x0.1 at 85 % of the steps, as the ViT-B schedule's first step (88.9 %).
max_iters = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[85], gamma=0.1),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
