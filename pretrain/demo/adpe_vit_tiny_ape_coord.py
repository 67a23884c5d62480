_base_ = ['./_base_demo.py']
# Tiny sibling of pretrain/adpe_vitb_ape_coord.py.
model = dict(adversary='coordinate')
