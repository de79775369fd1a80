"""Lazy package attributes: a package names its submodules and re-exported names, and each is
imported on first access, so `import fm_jax` costs nothing and `fm.paths` imports only JAX.

Hand-written on PEP 562 (a module-level `__getattr__`) with `importlib`: a dozen lines, where a
dependency (e.g. `lazy_loader`) would add a package and a stub file per package for the same.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, submodules: list[str], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`(__getattr__, __dir__, __all__)` for `package`: `submodules` import on first access, and
    `names` maps each re-exported name to the submodule that defines it."""
    public = sorted([*submodules, *names])

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__, public
