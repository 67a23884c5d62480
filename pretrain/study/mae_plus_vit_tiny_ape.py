_base_ = ['./_base_study.py']
# MAE+ (APE) of the study: the demo's pretrain/demo/mae_plus_vit_tiny_ape.py at the study's size and length.
