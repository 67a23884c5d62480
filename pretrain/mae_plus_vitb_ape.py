_base_ = ['./_base_/pretrain_runtime.py']
# MAE+ baseline, absolute sin-cos positions (published: protocol imagenet_ft,
# adpe/report/published.json).
