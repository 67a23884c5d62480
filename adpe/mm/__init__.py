"""OpenMMLab integration: importing this package registers the suite's modules.

Everything is registered in mmengine's root registries, which mmseg's and mmdet's registries fall back to,
so configs with ``default_scope='mmseg'`` or ``default_scope='mmdet'`` find the same names. One module per
registry kind: a ``type=`` in a config names a class in

  models.py     AdPEPretrainer, AdPEMultiCropPreprocessor, AdPEViT      (MODELS)
  neck.py       AdPESimpleFPN, AdPELN2d                                 (MODELS: ViTDet's neck)
  detection.py  AdPECascadeRoIHead                                      (MODELS: ViTDet's Cascade head)
  inference.py  AdPEDetTTAModel                                         (MODELS: COCO flip test)
  datasets.py   AdPEImageFolder, CheckedLoadAnnotations, CheckedCocoDataset, adpe_multicrop_collate
  hooks.py      every hook (EffectiveBatchHook, SafeCheckpointHook, ...)
  optim.py      AutoAmpOptimWrapper, AutocastOptimWrapper, AdPEOptimWrapperConstructor,
                AdPELayerDecayConstructor, MAELars
  patches.py    not a registry: what importing adpe.mm changes elsewhere (listed in its docstring)
  runner.py     the launchers' config building (tools/train.py, tools/test.py)
"""

from adpe.mm import (  # noqa: F401  (registration)
    datasets,
    detection,
    hooks,
    inference,
    models,
    neck,
    optim,
    patches,
    records,
)
