# ViTDet's COCO recipe for an AdPE ViT-B/16 (docs/method.md), shared by Mask R-CNN and Cascade Mask R-CNN: LSJ
# 1024 (scale 0.1-2.0), 64 images per optimiser step, AdamW (0.9, 0.999), wd 0.1, layer decay 0.7, drop path 0.1,
# window attention 14 with global blocks 2/5/8/11, simple feature pyramid with LayerNorm2d, RPN with 2 convs,
# AMP. Everything but the detector's heads and the schedule's numbers, which the configs on top set.
# The model parts are variables (vitdet_*): a base may not define `model` beside mmdet's model base.
_base_ = ['mmdet::common/lsj-100e_coco-instance.py']
custom_imports = dict(imports=['adpe.mm'], allow_failed_imports=False)
# Records the backbone's resolved 'auto' settings in the saved config and checkpoints; EffectiveBatchHook keeps
# 64 images per optimiser step on any GPU count by gradient accumulation (4 GPUs x 8 images: 2 steps).
custom_hooks = [dict(type='ResolvedBackboneHook'), dict(type='EffectiveBatchHook'), dict(type='NonFiniteLossHook'),
                dict(type='WorkDirLockHook'), dict(type='TestRecordsHook')]
effective_batch = 64
# The alternative, mmdet's --auto-scale-lr: lr x (GPUs x batch_size) / 64, no accumulation (our launchers then
# set effective_batch = None: one mechanism at a time).
auto_scale_lr = dict(enable=False, base_batch_size=effective_batch)

image_size = (1024, 1024)
norm_cfg = dict(type='AdPELN2d', requires_grad=True)
# Every input is padded to the square the backbone is built for, bottom-right, with 0 after normalisation (the
# mean pixel), as detectron2 does (ViTDet's square_pad=1024, ImageList.from_tensors(pad_value=0.0)). The padding is
# done here, not by a pipeline Pad, so that img_shape stays the resized image's: boxes and proposals are clipped
# to the image, not to the padded square (docs/method.md, Recipe decisions). Training pads the same way as
# mmdet's BatchFixedSizePad did (images and masks with 0).
vitdet_preprocessor = dict(pad_size_divisor=image_size[0], pad_mask=True, batch_augments=None)
vitdet_backbone = dict(
    _delete_=True,
    type='AdPEViT',
    size='base',
    img_size=image_size,
    # ViTDet learns the pretraining's 14 x 14 position table and resamples it to the 64 x 64 grid in every forward
    # (detectron2 ViT(pretrain_img_size=224), get_abs_pos), rather than learning a 64 x 64 table
    pos_embed_size=224,
    mode='det',
    window_size=14,
    global_blocks=(2, 5, 8, 11),
    rel_pos='auto',
    rpe_lookup='auto',
    drop_path_rate=0.1,
    use_checkpoint=False,  # True trades compute for memory
    compile=False,  # True: torch.compile the blocks on GPU machines (README, "GPU nodes and clusters")
    init_cfg=dict(type='Pretrained', checkpoint=None),
)
vitdet_neck = dict(_delete_=True, type='AdPESimpleFPN', in_channels=768, out_channels=256,
                   scales=(4.0, 2.0, 1.0, 0.5), num_outs=5)
# ViTDet's 4conv+1fc box head with LN (one per stage in Cascade).
vitdet_box_head = dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg)

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),  # padded to the square by vitdet_preprocessor
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=8, num_workers=8, dataset=dict(_delete_=True, type='CheckedCocoDataset',
    data_root='data/coco/', ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
    filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset', pipeline=test_pipeline))
test_dataloader = val_dataloader
# mmdet's CocoMetric that also keeps COCOeval's per-image matches; TestRecordsHook writes them beside the test
# results (test_records.npz: the report's intervals and paired deltas, docs/statistics.md)
val_evaluator = dict(type='RecordedCocoMetric')
test_evaluator = val_evaluator
# tools/test.py --tta: horizontal flip, views merged by box NMS as mmdet's DetTTAModel does, each kept box with its
# own view's mask (AdPEDetTTAModel: mmdet 3.3.0's DetTTAModel refuses masks). The data preprocessor pads each view
# after its flip, bottom-right, so the predictions map back onto the image.
tta_model = dict(type='AdPEDetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
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

optim_wrapper = dict(
    _delete_=True,
    type='AutoAmpOptimWrapper',  # bf16 autocast on CPUs and bf16 GPUs, fp16 + dynamic loss scale on older GPUs
    constructor='AdPELayerDecayConstructor',
    # detectron2 ViTDet's get_default_optimizer_params(weight_decay_norm=0, overrides={'pos_embed': wd 0}): only the
    # ViT's LayerNorms and pos_embed are not decayed; biases, rel_pos_h / rel_pos_w and the pyramid's and heads'
    # LayerNorm2d (detectron2's LayerNorm, a plain nn.Module there) are decayed (0.1).
    paramwise_cfg=dict(layer_decay_rate=0.7, weight_decay_rule='detectron2'),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
)
max_iters = 184375
interval = 5000
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[163889, 177546], gamma=0.1),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=interval, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
resume = True  # continue from the newest checkpoint in the work dir, if any
# A fixed seed makes every variant of a comparison see the same head init and data order (--cfg-options
# randomness.seed=N for another draw).
randomness = dict(seed=0)
