"""Registering a subclass of an mmseg / mmdet class without importing mmseg or mmdet at ``import adpe.mm``."""

from __future__ import annotations

import functools
from collections.abc import Callable


def registered_lazily(registry, name: str) -> Callable[[Callable[[], type]], Callable[[], type]]:
    """Decorator of a function that defines a class on first call (importing mmseg / mmdet there): registers ``name``
    in ``registry`` as a builder of that class, and returns the function, cached, so that every call gives the same
    class. Pretraining, which loads neither mmseg nor mmdet, never calls it."""

    def register(define: Callable[[], type]) -> Callable[[], type]:
        define = functools.cache(define)

        def build(**kwargs):
            return define()(**kwargs)

        build.__name__ = build.__qualname__ = f"build_{name}"
        build.__doc__ = f"``type='{name}'``: the class of ``{define.__name__}()``, built with the config's arguments."
        registry.register_module(name=name, module=build)
        return define

    return register
