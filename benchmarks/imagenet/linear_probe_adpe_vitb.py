# ImageNet-1k linear probing of a pretrained ViT-B/16, MAE's recipe (main_linprobe.py): the encoder frozen, its
# normalised cls token through BatchNorm without affine parameters (eps 1e-6) and a linear layer (trunc-normal
# std 0.01); LARS (momentum 0.9, no weight decay) at effective batch 16384, lr = base lr 0.1 x 16384 / 256,
# 90 epochs with 10 warm-up epochs then cosine to 0, cross-entropy; RandomResizedCrop + flip for training,
# resize 256 + centre crop 224 for testing.
#   tools/dist_train.sh benchmarks/imagenet/linear_probe_adpe_vitb.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = ['mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py', 'mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['adpe.mm'], allow_failed_imports=False)
custom_hooks = [dict(type='ResolvedBackboneHook'), dict(type='EffectiveBatchHook'), dict(type='NonFiniteLossHook'),
                dict(type='WorkDirLockHook'), dict(type='TestRecordsHook')]
effective_batch = 16384  # 8 GPUs x 512 images x 4 accumulation steps
auto_scale_lr = dict(enable=False, base_batch_size=effective_batch)
base_lr = 0.1

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='AdPEViT',
        size='base',
        img_size=224,
        mode='cls',
        pool='cls',  # MAE's linear probe reads the cls token after the final norm (its --global_pool is off)
        frozen=True,
        rel_pos='auto',
        rpe_lookup='auto',
        init_cfg=dict(type='Pretrained', checkpoint=None),
    ),
    neck=dict(type='ClsBatchNormNeck', input_features=768, affine=False, eps=1e-6),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.01)],
    ),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=512, drop_last=True, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=256)
test_dataloader = val_dataloader
# mmpretrain's Accuracy that also keeps each image's top-5; TestRecordsHook writes them beside the test results
# (test_records.npz: the report's intervals and paired deltas, docs/statistics.md)
val_evaluator = dict(type='RecordedAccuracy', topk=(1, 5))
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='AutoAmpOptimWrapper',
    # timm's Lars with MAE's grouping: trust-ratio adaptation for the weight matrix, plain momentum for the bias
    optimizer=dict(type='MAELars', lr=base_lr * effective_batch / 256, momentum=0.9, weight_decay=0.0),
)
epochs = 90
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=0.0, by_epoch=True, begin=warmup_epochs,
         end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=10, max_keep_ckpts=2), logger=dict(interval=50))
resume = True
randomness = dict(seed=0, diff_rank_seed=True)
