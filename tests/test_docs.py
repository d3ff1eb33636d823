"""The docs hold together: every relative link and image exists, every figure in docs/img is shown, and
every result file the benchmark page quotes is in the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")          # [text](target) and ![alt](target)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)  # fenced blocks and inline code hold no links


def relative_targets(page: Path) -> list[str]:
    """Targets of the page's Markdown links and images that name a file or folder of the repository (no
    URL, no anchor; a path has a dot or a slash, which keeps formulas such as E[F](q) out)."""
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    targets = (m.group(1).split("#")[0] for m in LINK.finditer(text))
    return [t for t in targets if re.search(r"[./]", t) and not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_exists(page):
    missing = [t for t in relative_targets(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_every_figure_in_docs_img_is_shown_by_a_page():
    shown = {(page.parent / t).resolve() for page in PAGES for t in relative_targets(page)}
    unshown = [p.name for p in sorted((ROOT / "docs" / "img").glob("*.png")) if p.resolve() not in shown]
    assert not unshown, f"figures no page shows: {unshown}"


def test_the_result_files_the_benchmark_page_quotes_exist():
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    quoted = set(re.findall(r"\b([a-z0-9_]+\.json)\b", text))
    assert {"precision_cpu_200frames_pairs.json", "throughput_cpu.json"} <= quoted
    results = ROOT / "benchmarks" / "results"
    missing = sorted(name for name in quoted if not (results / name).exists())
    assert missing == [], f"benchmarks.md quotes result files that are not in benchmarks/results: {missing}"
