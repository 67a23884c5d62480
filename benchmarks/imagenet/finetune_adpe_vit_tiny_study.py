_base_ = ['./finetune_adpe_vit_tiny_demo.py']
# The study's fine-tuning (make study, tools/study_pipeline.yaml): the demo's fine-tuning recipe on the study's tiny
# ViT (patch 8, 56^2 crops) and on all 1280 train labels, validated on val/ and tested once on test/. What differs
# from the demo, and why -- each choice made on val/ (256 images) with the 16-epoch MAE+ backbone and random init,
# 2026-12-07 (README, Study):
# - all train labels. The 16-per-class list (data/study/imagenet/meta/train_16.txt) is one option away:
#   --cfg-options train_dataloader.dataset.ann_file=meta/train_16.txt. Its earlier runs here (11-17 % top-1 for
#   every init) measured nothing: the list numbered classes in another order than the class folders of val/ and
#   test/, fixed since (adpe.tooling.demo_data.write_imagenet), and it has not been rerun;
# - no mixup / cutmix, no random erasing, and RandomResizedCrop keeping 35-100 % of the image (the default 8 % can
#   cut the object, the class, away): chosen on those 16-label runs, so none is measured on its own;
# - 20 epochs (800 steps of 32 images); val top-1 10 epochs / 20 epochs: MAE+ 33.2 / 40.6, random init 24.2 / 26.6.
data_root = 'data/study/imagenet'
crop = 56
model = dict(backbone=dict(img_size=crop, patch_size=8), train_cfg=dict(_delete_=True))  # no batch augments
# the class folders' names in mmpretrain's folder order (sorted): what a label list (ann_file) needs
classes = ('circle', 'cross', 'ellipse', 'hexagon', 'ring', 'square', 'star', 'triangle')
bgr_mean = [103.53, 116.28, 123.675]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=crop, crop_ratio_range=(0.35, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
         magnitude_std=0.5, hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=crop),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = dict(batch_size=64, num_workers=1,
                       dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='test',
                                    pipeline=test_pipeline))
epochs = 20  # 800 steps of 32 images
warmup_epochs = 2
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min_ratio=1e-6 / 1e-3, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs, val_interval=epochs)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=epochs, max_keep_ckpts=1, save_best=None))
