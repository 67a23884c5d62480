"""The built-in demo, an optional part of the package: small generated datasets in the real ImageNet, ADE20K
and COCO on-disk formats (``adpe.demo.data``). Unlike the core package it needs OpenCV (``cv2``), which the
OpenMMLab stack brings."""
