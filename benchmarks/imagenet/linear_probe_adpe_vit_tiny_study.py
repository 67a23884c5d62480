_base_ = ['./linear_probe_adpe_vit_tiny_demo.py']
# The study's linear probe (make study, tools/study_pipeline.yaml): the demo's probe on the study's tiny ViT
# (patch 8, 56^2 crops of the 64-80 px images) and data, on all 1280 train labels; validated on val/, tested
# once on test/ (the study's choices were made on val/).
data_root = 'data/study/imagenet'
crop = 56
model = dict(backbone=dict(img_size=crop, patch_size=8))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=crop),
    dict(type='PackInputs'),
]
train_pipeline = [*test_pipeline[:-1], dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                  dict(type='PackInputs')]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = dict(batch_size=64, num_workers=1,
                       dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='test',
                                    pipeline=test_pipeline))
epochs = 8  # 160 steps of 64 images
warmup_epochs = 1
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=0.0, by_epoch=True, begin=warmup_epochs,
         end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs, val_interval=epochs)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=epochs, max_keep_ckpts=1))
