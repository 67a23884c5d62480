_base_ = ['./_base_/pretrain_runtime.py']
# MAE+ baseline with iRPE (published: protocol imagenet_ft, adpe/report/published.json).
model = dict(position='rpe', rpe_lookup='discrete')
