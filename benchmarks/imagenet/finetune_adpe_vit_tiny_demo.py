# Tiny fine-tuning for the demo and tests: a demo pretraining run's tiny ViT (192-d, 4 blocks) on the generated
# ImageNet-format folder (data/demo/imagenet, 8 shape classes). The ViT-B recipe's pieces (average pooling +
# fc_norm, layer decay, mixup / cutmix, label smoothing, RandAugment, random erasing, warm-up + cosine), sized
# for a CPU: 112^2 crops of the 128^2 images (the pretraining crop size), batch 32, 10 epochs.
_base_ = ['./finetune_adpe_vitb.py']
data_root = 'data/demo/imagenet'
effective_batch = None  # one process, 32 images per step
auto_scale_lr = dict(enable=False, base_batch_size=32)
num_classes = 8
data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(size='tiny', img_size=112, drop_path_rate=0.0),
    head=dict(num_classes=num_classes, in_channels=192),
)
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=112, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
         magnitude_std=0.5, hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
         fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=128, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=112),
    dict(type='PackInputs'),
]
# mmpretrain's folder dataset: class names from the sub-folders of train/ and val/
train_dataloader = dict(batch_size=32, num_workers=2, persistent_workers=True,
                        dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='train',
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, num_workers=1,
                      dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='val',
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1e-3))
epochs = 10
warmup_epochs = 1
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min_ratio=1e-6 / 1e-3, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),  # MAE's end: 1e-6 x each group's scale
]
train_cfg = dict(max_epochs=epochs, val_interval=epochs)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=epochs, max_keep_ckpts=1, save_best=None))
