_base_ = ['./_base_/pretrain_runtime.py']
# AdPE, absolute positions, coordinate mode (published: protocol imagenet_ft, adpe/report/published.json).
model = dict(adversary='coordinate')
