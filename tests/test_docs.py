"""The user guide: the docs build in strict mode (a broken link or a page missing from the nav
fails), the configuration reference generated from the schema lists every option, and the
README's links and first commands are what a new user needs."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ahm_core.config import AHMConfig

ROOT = Path(__file__).parents[1]
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None
needs_mkdocs = pytest.mark.skipif(
    not HAS_MKDOCS,
    reason="mkdocs is not installed (it is in the dev extra: pip install -e '.[dev]')",
)


def _hooks():
    spec = importlib.util.spec_from_file_location("ahm_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options() -> list[str]:
    return [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(AHMConfig)
        for f in dataclasses.fields(section.default_factory)
    ]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_configuration_reference_has_a_row_for_every_option():
    reference = _hooks().reference()
    rows = {m.group(1) for m in re.finditer(r"^\| `([a-z_]+\.[a-z_0-9]+)` \|", reference, re.M)}
    assert rows == set(_options())
    # the comment beside a field in ahm_core/config.py, its bounds and its registry's names
    assert re.search(
        r"^\| `data\.root` \| str \| `\"\"` \|  \| folder or InsightFace", reference, re.M
    )
    assert re.search(r"^\| `mixup\.k` \| int \| `2` \| >= 2 \|", reference, re.M)
    assert re.search(r"^\| `masking\.method` .*`ppfr_fd`", reference, re.M)


def test_the_configuration_page_holds_the_marker_the_hook_replaces():
    assert _hooks().MARKER in (ROOT / "docs" / "configuration.md").read_text()


@needs_mkdocs
def test_the_docs_build_in_strict_mode_with_the_generated_reference(tmp_path):
    site = tmp_path / "site"
    result = _build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr
    page = (site / "configuration.html").read_text()
    missing = [o for o in _options() if f"<code>{o}</code>" not in page]
    assert not missing, f"configuration reference lacks {missing}"
    assert "ahm:config-reference" not in page
    for name in ("index", "federated", "threat-model", "paper-tables", "results", "deployment"):
        assert (site / f"{name}.html").is_file()
    for name in ("data", "reproduction", "extending", "performance", "robustness", "design"):
        assert (site / f"{name}.html").is_file()


@needs_mkdocs
@pytest.mark.parametrize(
    "text, message",
    [
        ("[gone](no_such_page.md)", "no_such_page.md"),
        ("[no anchor](#no-such-heading)", "no-such-heading"),
    ],
)
def test_a_broken_link_fails_the_strict_build(tmp_path, text, message):
    """The project's own validation settings, on a page with one broken link."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Index\n\n{text}\n")
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}], hooks=[])
    config.pop("exclude_docs", None)
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    result = _build(path, tmp_path / "site")
    assert result.returncode != 0 and message in result.stderr, result.stderr


@needs_mkdocs
def test_a_page_left_out_of_the_nav_fails_the_strict_build(tmp_path):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Index\n")
    (docs / "orphan.md").write_text("# Orphan\n")
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}], hooks=[])
    config.pop("exclude_docs", None)
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    result = _build(path, tmp_path / "site")
    assert result.returncode != 0 and "orphan.md" in result.stderr, result.stderr


def test_the_readme_starts_with_the_two_commands_and_links_only_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:15])
    assert "make demo" in head and "make test" in head
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links {target}, which does not exist"


def test_the_reward_floor_table_is_the_one_the_code_prints():
    from simulations.reward_floors import floor_table

    text = (ROOT / "docs" / "reproduction.md").read_text()
    shown = text.split("<!-- reward-floors -->\n")[1].split("\n<!-- /reward-floors -->")[0]
    assert shown == floor_table([2, 3, 4, 5, 6], 0.55, 100_000, 0)
