"""Every code block of the README is checked, and its links lead somewhere.

- ```python blocks run in order in one namespace (a later block continues an earlier one), and
  the values their comments state hold;
- ```bash blocks: each `fm-jax ...` line parses with the command's own parser
  (`fm_jax.cli.build_parser()`), its `--config` is a packaged config or a file that exists and
  its `--config.FIELD=VALUE` overrides apply to that config; each `make TARGET` names a target
  of the Makefile; each `pip install` extra is one of pyproject.toml's; each repository file a
  line names (`experiments/...py`) exists;
- every link of README.md and results/README.md to a heading (`#anchor`) or a file resolves.
"""

import math
import pathlib
import re
import shlex
import tomllib

import jax.numpy as jnp
import pytest

import fm_jax.configs
from fm_jax import cli
from fm_jax.train import METHODS, apply_overrides, load_config

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "results" / "README.md"]
LANGUAGES = ("python", "bash")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def code_blocks(path: pathlib.Path, language: str | None = None) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced block of `path`, of one language or all."""
    text = path.read_text()
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(2))
        for m in FENCE.finditer(text)
        if language is None or m.group(1) == language
    ]


def test_every_code_block_is_python_or_bash():
    for path in DOCS:
        text = path.read_text()
        assert text.count("```") % 2 == 0, f"{path.name} has an unclosed code fence"
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            assert m.group(1) in LANGUAGES, f"{path.name}:{line}: a ```{m.group(1)} block is checked by nothing"


def test_the_python_blocks_run_in_order_and_their_comments_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the checkout
    blocks = code_blocks(README, "python")
    assert len(blocks) >= 3, "the README lost its Python examples"
    namespace: dict = {}
    for line, block in blocks:
        exec(compile(block, f"README.md, the python block at line {line}", "exec"), namespace)
    ns = namespace
    # The first example: sampling counts evaluations, encoding maps the samples back.
    assert int(ns["sol"].nfe) > 0 and ns["back"].x.shape == (1000, 2)
    assert jnp.isfinite(ns["value"]) and set(ns["metrics"]) >= {"loss"}
    # The likelihood example: "~1e-5 nats" from the closed-form density.
    assert float(jnp.abs(ns["out"].log_prob - ns["flow"].log_prob(1.0, ns["x1"])).max()) < 1e-4
    # The training example: the run went its 20 steps and sampled moons-shaped points.
    assert int(ns["state"].step) == ns["config"].num_steps and ns["moons"].shape == (500, 2)
    # The discrete example: 50 jumps, and the bound at the entropy of the two tokens (1.88 nats).
    assert ns["tokens"].x1.shape == (1000, 2) and int(ns["tokens"].nfe) == 50
    assert float(jnp.mean(ns["nats"])) == pytest.approx(2 * (-0.7 * math.log(0.7) - 0.3 * math.log(0.1)), rel=0.05)


def bash_lines(path: pathlib.Path = README) -> list[tuple[int, list[str]]]:
    """(line number, words) of each command in the bash blocks, comments dropped, `\\` lines joined."""
    lines = []
    for first, block in code_blocks(path, "bash"):
        for offset, line in enumerate(block.replace("\\\n", " ").split("\n")):
            words = shlex.split(line, comments=True)
            if words:
                lines.append((first + offset, words))
    return lines


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def test_the_bash_blocks_name_commands_configs_targets_and_extras_that_exist():
    lines = bash_lines()
    fm_jax_lines = [(n, w) for n, w in lines if w[0] == "fm-jax"]
    assert len(fm_jax_lines) >= 10, "the README lost its commands"
    targets, extras = _makefile_targets(), _extras()
    for n, words in lines:
        where = f"README.md:{n}: {' '.join(words)}"
        if words[0] == "fm-jax":
            try:
                args, extra = cli.build_parser().parse_known_args(words[1:])
                overrides = cli.parse_overrides(extra) if args.command == "train" else {}
            except SystemExit as err:
                pytest.fail(f"{where}\ndoes not parse: {err}")
            assert args.command == "train" or not extra, f"{where}\nunknown arguments {extra}"
            if args.command == "train":
                name = args.config
                assert name in fm_jax.configs.names() or (ROOT / name).is_file(), f"{where}\nno config {name!r}"
                config = apply_overrides(
                    load_config(name if name in fm_jax.configs.names() else ROOT / name), overrides
                )
                assert config.method in METHODS, where
        elif words[0] == "make":
            for target in words[1:]:
                assert target in targets, f"{where}\nthe Makefile has no target {target!r}"
        elif words[:2] == ["pip", "install"]:
            for word in words[2:]:
                for group in re.findall(r"(?:^\.|^fm_jax)\[([\w,-]+)\]", word):
                    for name in group.split(","):
                        assert name in extras, f"{where}\npyproject.toml has no extra {name!r}"
        for word in words:  # repository files named on a line: scripts, configs, notebooks
            if re.fullmatch(r"(experiments|fm_jax|tests|results)/[\w./-]+\.(py|ipynb|md)", word):
                assert (ROOT / word).is_file(), f"{where}\nno file {word}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    """The anchors of the headings of a markdown file (outside code blocks), repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for m in re.finditer(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text()), flags=re.M):
        slug = _slug(m.group(1))
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_to_a_heading_or_a_file(path):
    text = FENCE.sub("", path.read_text())
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, f"{path.name} links nowhere"
    for link in links:
        if re.match(r"\w+://", link):
            continue
        file, _, anchor = link.partition("#")
        target = (path.parent / file).resolve() if file else path
        assert target.exists(), f"{path.name}: link {link!r} leads to no file"
        if anchor:
            assert anchor in anchors(target), f"{path.name}: link {link!r} leads to no heading of {target.name}"


def test_the_contents_list_every_section_of_the_readme():
    contents = README.read_text().split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = {_slug(h) for h in re.findall(r"^## (.+)$", FENCE.sub("", README.read_text()), flags=re.M)}
    assert sections - {"contents", "quick-start"} <= listed
