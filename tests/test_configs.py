"""The packaged configs (fm_jax/configs): found by name or by path, valid, and their run commands true."""

import json
import pathlib
import re
import shlex

import pytest

import fm_jax.configs
from fm_jax import cli
from fm_jax.train import METHODS, RunSpec, apply_overrides, load_config

PACKAGE = pathlib.Path(fm_jax.configs.__file__).parent


def as_text(config):
    """A config as sorted JSON: NaN fields (a method's default left unset) compare equal."""
    return json.dumps(config.to_dict(), sort_keys=True)


def test_names_are_the_config_files_of_the_package():
    files = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.name.startswith("_"))
    assert fm_jax.configs.names() == files
    assert {"toy2d", "images", "cifar10_fm", "cifar10_torchcfm"} <= set(files)


@pytest.mark.parametrize("name", fm_jax.configs.names())
def test_a_name_loads_the_packaged_file_and_the_path_loads_the_same(name):
    by_name = load_config(name)
    assert as_text(by_name) == as_text(load_config(PACKAGE / f"{name}.py"))
    assert as_text(by_name) == as_text(load_config(str(PACKAGE / f"{name}.py")))
    assert by_name.method in METHODS


def test_the_toy2d_config_is_otcfm_to_moons():
    config = load_config("toy2d")
    assert (config.method, config.source, config.target) == ("otcfm", "normal", "moons")


def test_a_bare_name_is_always_a_packaged_config_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy2d").write_text("this is not a config\n")
    assert load_config("toy2d").target == "moons"
    with pytest.raises(ValueError, match="No config file"):
        load_config("./toy2d.py")  # a path is a path: nothing is looked up in the package


def test_a_file_of_ones_own_loads_by_its_path(tmp_path, monkeypatch):
    own = tmp_path / "mine.py"
    own.write_text(
        "from fm_jax.configs import toy2d\n\n\ndef get_config():\n"
        "    config = toy2d.get_config()\n    config.target = 'spirals'\n    return config\n"
    )
    assert load_config(own).target == "spirals"
    monkeypatch.chdir(tmp_path)
    assert load_config("mine.py").target == "spirals"
    assert load_config("./mine.py").target == "spirals"


def test_an_unknown_name_lists_the_packaged_configs_and_says_a_path_works():
    with pytest.raises(ValueError) as err:
        load_config("toy3d")
    message = str(err.value)
    assert "'toy3d'" in message and "path" in message
    for name in fm_jax.configs.names():
        assert repr(name) in message


def test_a_missing_file_names_the_path_and_the_packaged_configs(tmp_path):
    with pytest.raises(ValueError, match=r"No config file at .*nope\.py.*'toy2d'"):
        load_config(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        load_config(tmp_path / "empty.py")


def test_the_command_line_takes_a_name_and_refuses_an_unknown_one_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--config", "toy3d", "--workdir", str(tmp_path / "w")])
    assert "Unknown packaged config 'toy3d'" in str(err.value.code)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", fm_jax.configs.names())
def test_every_packaged_config_resolves_into_a_run_spec(name, tmp_path_factory):
    config = load_config(name)
    if config.target.startswith("tfds:"):
        # CIFAR-10 is not prepared offline: the same recipe is checked on the offline digits.
        data_dir = tmp_path_factory.getbasetemp() / "tfds"
        config = apply_overrides(config, {"target": "tfds:digits", "data.dir": str(data_dir)})
    spec = RunSpec.from_config(config)
    assert spec.method.name == config.method


def _docstring_commands(name):
    """The `fm-jax ...` commands in a config's docstring, continuation lines joined."""
    doc = fm_jax.configs.path(name).read_text().split('"""')[1]
    return [shlex.split(m) for m in re.findall(r"^\s*(fm-jax .*?)$", doc.replace("\\\n", " "), flags=re.M)]


@pytest.mark.parametrize("name", fm_jax.configs.names())
def test_the_run_commands_in_each_docstring_parse_and_name_the_config(name):
    commands = _docstring_commands(name)
    trains = [c for c in commands if c[1] == "train"]
    assert trains, f"{name}.py's docstring gives no `fm-jax train` command"
    for argv in commands:
        args, extra = cli.build_parser().parse_known_args(argv[1:])
        overrides = cli.parse_overrides(extra)  # SystemExit on anything but --config.FIELD=VALUE
        assert args.command == "train" or not extra, argv
        if args.command == "train":
            assert args.config == name, f"{name}.py's command trains {args.config!r}: {' '.join(argv)}"
            config = apply_overrides(load_config(args.config), overrides)
            assert config.method in METHODS
