_base_ = ['../_base_/pretrain_runtime.py']
# Tiny ViT on the generated demo folder: the whole recipe, sized to run in minutes on a 2-core CPU.
data_root = 'data/demo/imagenet'
effective_batch = None  # take accumulative_counts as written: one step per batch of 16 images
batch_size = 16
epochs = 10  # 160 steps on the 256 demo images
warmup_epochs = 2
model = dict(size='tiny')
train_dataloader = dict(batch_size=batch_size, num_workers=2, persistent_workers=True, pin_memory=False,
                        dataset=dict(data_root=data_root))
optim_wrapper = dict(optimizer=dict(lr=1.5e-3), paramwise_cfg=dict(adv_lr=1.5e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=5, max_keep_ckpts=1))
# The base's hooks, with the kNN monitor on the demo ImageNet (all 256 train images as the bank, the 320 val images
# as queries) before training, after epoch 5 and at the end.
custom_hooks = [dict(type='EffectiveBatchHook'), dict(type='AdversaryHook'), dict(type='RandomStateHook'),
                dict(type='NonFiniteLossHook'), dict(type='WorkDirLockHook'),
                dict(type='KNNMonitorHook', data_root='pretraining', interval=5, at_start=True)]
