_base_ = ['./_base_/pretrain_runtime.py']
# MAE+ baseline, absolute sin-cos positions (released 400-epoch ViT-B: 83.9 ImageNet top-1).
