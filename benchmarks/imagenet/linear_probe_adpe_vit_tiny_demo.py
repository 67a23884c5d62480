# Tiny linear probe for the demo and tests: the frozen tiny ViT (192-d, 4 blocks) of a demo pretraining run on
# the generated ImageNet-format folder (data/demo/imagenet: 8 shape classes, hue and pattern independent of the
# class, labelled train/ and val/). The ViT-B recipe's head (frozen encoder, BatchNorm without affine, linear
# layer, warm-up + cosine), sized for a CPU and for a few hundred images; what differs, for every row alike:
# - average-pooled features (fc_norm of the mean patch token): MAE's probe reads the cls token, which a few hundred
#   pretraining steps leave nearly untrained;
# - SGD with momentum instead of LARS: LARS moves each weight matrix by 0.1 % x lr of its norm per step, sized
#   for MAE's ~7000 steps; the demo makes 48;
# - the test transform (resize, centre crop to the pretraining crop size 112^2) plus a flip for training:
#   random-resized crops of a few hundred images would cut the shapes that make the classes.
_base_ = ['./linear_probe_adpe_vitb.py']
data_root = 'data/demo/imagenet'
effective_batch = None  # one process, 64 images per step
auto_scale_lr = dict(enable=False, base_batch_size=64)
num_classes = 8
data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(size='tiny', img_size=112, pool='avg'),
    neck=dict(input_features=192),
    head=dict(num_classes=num_classes, in_channels=192),
)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=128, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=112),
    dict(type='PackInputs'),
]
train_pipeline = [*test_pipeline[:-1], dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                  dict(type='PackInputs')]
# mmpretrain's folder dataset: class names from the sub-folders of train/ and val/
train_dataloader = dict(batch_size=64, num_workers=2, persistent_workers=True, drop_last=True,
                        dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='train',
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, num_workers=1,
                      dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='val',
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(_delete_=True, type='SGD', lr=0.2, momentum=0.9,
                                                         weight_decay=0.0))
epochs = 12
warmup_epochs = 2
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=0.0, by_epoch=True, begin=warmup_epochs,
         end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs, val_interval=epochs)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=epochs, max_keep_ckpts=1))
