"""Lazy loading: `import fm_jax` and `fm-jax --help` import no heavy package, and every
documented name is there on first touch (`fm_jax.lazy`)."""

import json
import subprocess
import sys

import pytest

import fm_jax as fm

HEAVY = ("jax", "flax", "orbax", "tensorflow_datasets", "grain", "matplotlib", "ott", "ot", "diffrax", "torch")


def imported_by(code: str) -> set[str]:
    """The heavy top-level packages a fresh interpreter holds after running `code`."""
    report = f"import sys, json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_fm_jax_and_the_cli_help_import_nothing_heavy():
    assert imported_by("import fm_jax") == set()
    help_text = "from fm_jax import cli\ntry: cli.main(['--help'])\nexcept SystemExit: pass"
    assert imported_by(help_text) == set()
    # Building every subcommand loads nothing either: a help text fills in the tolerance when printed.
    assert imported_by("from fm_jax import cli\ncli.build_parser()") == set()


def test_a_math_module_loads_only_what_it_uses():
    assert imported_by("import fm_jax as fm; fm.paths.CondOT()") == {"jax"}
    assert imported_by("import fm_jax as fm; fm.SolverSpec.parse('euler:4')") == {"jax", "diffrax"}


def test_every_name_of_the_package_resolves_on_first_touch():
    for name in fm.__all__:
        assert getattr(fm, name) is not None, name
    assert sorted(dir(fm)) == sorted(fm.__all__)
    # The README's entry points after a bare `import fm_jax as fm`.
    assert callable(fm.train.train) and callable(fm.plots.save_grid) and callable(fm.models.MLP)
    assert fm.train.METHODS["otcfm"].name == "otcfm"
    with pytest.raises(AttributeError, match="has no attribute 'smaple'"):
        fm.smaple  # noqa: B018


def test_subcommand_help_shows_the_library_default_tolerance(capsys):
    from fm_jax import cli

    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    assert f"(default {fm.solvers.DEFAULT_TOL:g})" in capsys.readouterr().out


def test_couplings_load_their_solvers_with_the_first_solve():
    build = "import fm_jax as fm; fm.cfm_loss(fm.paths.CondOT(), fm.couplings.ExactOT()); fm.couplings.SinkhornOT()"
    assert imported_by(build) == {"jax"}
    solve = "import jax, fm_jax as fm; x = jax.numpy.zeros((4, 2)); fm.couplings.{}(jax.random.key(0), x, x)"
    assert {"ot"} <= imported_by(solve.format("ExactOT(solver='network_simplex')"))
    assert {"ott"} <= imported_by(solve.format("SinkhornOT()"))
