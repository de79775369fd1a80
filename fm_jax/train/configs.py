"""Config files and command-line overrides.

A config is an ml_collections `get_config()` file. Overrides come as `--config.a.b=value`
arguments; each value is parsed to the type of the field it replaces, and a field that does
not exist is an error naming the fields that do. (ml_collections' own `config_flags` needs
absl's global flag registry; the `fm-jax` command parses its arguments with argparse.)
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

__all__ = ["apply_overrides", "load_config"]


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """Run `get_config()` of a Python config file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"No config file at {str(path)!r}; see experiments/configs/ for examples.")
    spec = importlib.util.spec_from_file_location(f"fm_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config().")
    return module.get_config()


def _parse(text: str, like):
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(like, int):
        value = float(text)
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, str):
        return text
    raise ValueError(f"fields of type {type(like).__name__} cannot be set from the command line")


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Set `config.a.b = value` for each {"a.b": "value"}, typed like the field it replaces."""
    config = ml_collections.ConfigDict(config.to_dict())
    for name, text in overrides.items():
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ValueError(f"Unknown config field {name!r}: no section {part!r}.")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"Unknown config field {name!r}; the fields here are {sorted(node.keys())}.")
        try:
            node[leaf] = _parse(text, node[leaf])
        except ValueError as err:
            raise ValueError(f"Bad value for config field {name!r}: {err}.") from None
    return config
