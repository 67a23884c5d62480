_base_ = ['./_base_study.py']
# AdPE (APE, coordinate mode) of the study: the demo's pretrain/demo/adpe_vit_tiny_ape_coord.py at the study's
# size and length.
model = dict(adversary='coordinate')
