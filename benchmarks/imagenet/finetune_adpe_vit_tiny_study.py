_base_ = ['./finetune_adpe_vit_tiny_demo.py']
# The study's label-scarce fine-tuning (make study, tools/study_pipeline.yaml): the demo's fine-tuning recipe on
# the study's tiny ViT (patch 8, 56^2 crops) with 16 labelled images per class (data/study/imagenet/meta/
# train_16.txt, 128 images; the other train images are unlabelled pretraining data), where pretraining is known
# to matter most. Validated on val/, tested once on test/.
data_root = 'data/study/imagenet'
crop = 56
model = dict(backbone=dict(img_size=crop, patch_size=8))
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=crop, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
         magnitude_std=0.5, hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
         fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=crop),
    dict(type='PackInputs'),
]
classes = ('circle', 'square', 'triangle', 'star', 'ring', 'cross', 'ellipse', 'hexagon')  # demo_data.CLASSES
train_dataloader = dict(dataset=dict(data_root=data_root, ann_file='meta/train_16.txt', metainfo=dict(classes=classes),
                                     pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = dict(batch_size=64, num_workers=1,
                       dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='test',
                                    pipeline=test_pipeline))
epochs = 40  # 160 steps of 32 images
warmup_epochs = 4
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min_ratio=1e-6 / 1e-3, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs, val_interval=epochs)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=epochs, max_keep_ckpts=1, save_best=None))
