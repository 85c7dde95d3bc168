"""The documentation: the site builds in strict mode (a broken link between pages or a
docstring that does not parse fails it), and a shown output that stops matching fails the
suite (tests/shown_output.py runs the pages' examples)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sybil import Document
from sybil.example import SybilFailure
from tests.conftest import PYTHON, ROOT, child_env

import shown_output


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
    home = (tmp_path / "site" / "index.html").read_text()  # the README's opening, included
    assert "seed_everything" in home and "0.8996" in home


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


def evaluate(page: Path) -> None:
    """Runs every example tests/shown_output.py finds in ``page``, as the suite does."""
    document = Document.parse(str(page), *shown_output.PARSERS)
    document.namespace["tmp_path"] = page.parent
    for example in document.examples():
        example.evaluate()


def test_a_shown_output_that_stops_matching_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```console\n$ echo 0.25 seconds\n... seconds\n```\n")
    evaluate(page)  # `...` stands for the run-dependent value
    page.write_text("```console\n$ echo 0.25 seconds\n0.25 minutes\n```\n")
    with pytest.raises(SybilFailure, match="0.25 minutes"):
        evaluate(page)
    page.write_text("```python\n>>> print(1 + 1)\n3\n```\n")
    with pytest.raises(SybilFailure, match="Expected:\\n    3\\nGot:\\n    2"):
        evaluate(page)


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
