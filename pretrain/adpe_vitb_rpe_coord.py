_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, iRPE, coordinate mode (published, 400 and 1600 epochs: protocol imagenet_ft,
# adpe/report/published.json).
model = dict(position='rpe', rpe_lookup='continuous', adversary='coordinate')
