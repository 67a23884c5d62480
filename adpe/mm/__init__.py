"""OpenMMLab integration: importing this package registers the suite's modules.

Everything is registered in mmengine's root registries, which mmseg's and mmdet's registries fall back to,
so configs with ``default_scope='mmseg'`` or ``default_scope='mmdet'`` find the same names.
"""

from adpe.mm import (  # noqa: F401  (registration)
    classification,
    datasets,
    detection,
    engine,
    fetch,
    hooks,
    inference,
    neck,
    patches,
    pretrain,
    records,
    transfer,
)
