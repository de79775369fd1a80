"""Config files and command-line overrides.

A config is an ml_collections `get_config()` file: one of the packaged configs
(`fm_jax.configs`, named as `toy2d`) or any file given by its path. Overrides come as `--config.a.b=value`
arguments; each value is parsed to the type of the field it replaces, and a field that does
not exist is an error naming the fields that do. (ml_collections' own `config_flags` needs
absl's global flag registry; the `fm-jax` command parses its arguments with argparse.)
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import pathlib

import ml_collections

from fm_jax import configs as packaged

__all__ = ["apply_overrides", "load_config"]


def load_config(name_or_path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """Run `get_config()` of a config: a packaged one by name, or a Python file by its path.

    A name without a "/" and without ".py" (`"toy2d"`, `"images"`) is a packaged config,
    `fm_jax/configs/NAME.py` (`fm_jax.configs.names()` lists them); anything else is a path
    (`"fm_jax/configs/toy2d.py"`, `"./my_config.py"`).
    """
    text = str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in text and not text.endswith(".py"):
        with importlib.resources.as_file(packaged.path(text)) as file:
            return _run_get_config(file)
    path = pathlib.Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"No config file at {text!r}; give a path to a get_config() file or the name of a packaged "
            f"config: {packaged.names()}."
        )
    return _run_get_config(path)


def _run_get_config(path: pathlib.Path) -> ml_collections.ConfigDict:
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
