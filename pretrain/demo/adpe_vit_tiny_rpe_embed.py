_base_ = ['./_base_demo.py']
# Tiny sibling of pretrain/adpe_vitb_rpe_embed.py.
model = dict(position='rpe', rpe_lookup='discrete', adversary='embedding')
