"""The documentation: the site builds in strict mode (a broken link between pages or a
docstring that does not parse fails it), and the first example's shown output is real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import PYTHON, ROOT, child_env


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**child_env(), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [PYTHON, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_site_builds_strictly_with_the_api_reference(tmp_path: Path) -> None:
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("seed_everything", "enable_determinism", "run_doctor", "TorchReproError"):
        assert name in api
    assert (tmp_path / "site" / "doctor" / "index.html").exists()


def test_a_broken_link_between_pages_fails_the_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text("# torchrepro\n\nSee [the guide](no-such-page.md).\n")
    config = tmp_path / "mkdocs.yml"
    text = (ROOT / "mkdocs.yml").read_text()
    text = text.replace("docs_dir: docs", f"docs_dir: {docs}")
    text = text.replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
    config.write_text(text)
    done = build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_first_example_prints_what_the_page_shows(page: str) -> None:
    text = (ROOT / page).read_text()
    match = re.search(r"```python\n(.*?)```\n```\n(.*?)```", text, re.DOTALL)
    assert match is not None, f"{page} has no example followed by its output"
    code, shown = match.groups()
    done = subprocess.run(
        [PYTHON, "-c", code],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=os.fspath(ROOT),
    )
    assert done.stdout == shown


def test_every_link_of_the_readme_reaches_a_page_and_its_heading() -> None:
    from markdown.extensions.toc import slugify

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+\.md)(?:#([^)\s]+))?\)", readme)
    assert len(links) >= 8
    for target, anchor in links:
        page = ROOT / target
        assert page.is_file(), f"README links to {target}, which is not there"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
            slugs = {slugify(h.replace("`", ""), "-") for h in headings}
            assert anchor in slugs, f"README links to {target}#{anchor}, no such heading"
