_base_ = ['./adpe_vitb_rpe_coord.py']
# The paper's long schedule: 1600 epochs with 40 warm-up epochs.
epochs = 1600
warmup_epochs = 40
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=0.0, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs)
