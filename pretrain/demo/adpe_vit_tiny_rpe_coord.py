_base_ = ['./_base_demo.py']
# Tiny sibling of pretrain/adpe_vitb_rpe_coord.py.
model = dict(position='rpe', rpe_lookup='continuous', adversary='coordinate')
