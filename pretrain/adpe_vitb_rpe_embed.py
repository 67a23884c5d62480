_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, iRPE, embedding mode (published: protocol imagenet_ft, adpe/report/published.json).
model = dict(position='rpe', rpe_lookup='discrete', adversary='embedding')
