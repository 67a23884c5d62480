_base_ = ['./_base_demo.py']
# Tiny sibling of pretrain/mae_plus_vitb_ape.py.
