# Tiny UperNet for the demo and tests: tiny ViT (192-d, 4 blocks) on the generated ADE20K-format folder
# (data/demo/ade20k: ADE20K's aspect ratios, panoramas included, short side 96-160; labels in ADE's 150-class
# space). Same pieces as the ViT-B recipe, at 1/4 of its sizes: crop 128, test short side 128.
_base_ = ['./upernet_adpe_vitb.py']
data_root = 'data/demo/ade20k'
# One process, 8 images per step, no accumulation (the ViT-B recipe's effective batch is not the demo's);
# --auto-scale-lr would scale the lr against the demo's own batch.
effective_batch = None
auto_scale_lr = dict(enable=False, base_batch_size=8)
crop_size = (128, 128)
# Top-level too: mmengine's Runner gives this one to the --tta model (SegTTAModel replaces its module's with it).
data_preprocessor = dict(size=crop_size, test_cfg=dict(size=crop_size))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(size='tiny', img_size=crop_size, out_indices=(0, 1, 2, 3), drop_path_rate=0.0),
    neck=dict(embed_dim=192),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=64),
    auxiliary_head=dict(in_channels=192, channels=32),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(85, 85)),
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='CheckedLoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=2,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=1, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
# --tta: the ViT-B recipe's multi-scale + flip (the release's min_size rule) around this test scale (256, 128): short
# sides max(int(128 r), 128) = 128, 128, 128, 160, 192, 224, long sides uncapped, each view also flipped
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='ResizeShortestEdge', scale=max(int(128 * r), 128), max_size=1 << 30)
         for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='CheckedLoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1e-3))
# 60 steps, validated and saved once at the end: make demo's time budget (README, "Demo")
max_iters = 60
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=12),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=12, end=max_iters, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
                     visualization=dict(type='SegVisualizationHook', draw=False))
