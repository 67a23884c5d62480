"""AdPE: adversarial positional embeddings for MAE+ pretraining of Vision Transformers.

The core package is pure torch + timm; ``adpe.mm`` registers the OpenMMLab (mmengine / mmseg / mmdet)
modules and is the only place that imports those libraries.
"""

__version__ = "0.1.0"
