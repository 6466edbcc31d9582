"""The README's figures come from files the code generates, and stay in step with them: each example writes
``docs/<name>.md`` from its JSON (``markdown(report)``), and the README quotes that text verbatim between
``<!-- generated: docs/<name>.md -->`` and ``<!-- end generated -->``."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("digits", "layer_rotation", "deep_orthogonal")


def _example(name: str):
    sys.path.insert(0, str(ROOT / "examples"))  # the examples import each other's data loading
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "examples"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_generated_summary_matches_its_json(name):
    report = json.loads((ROOT / "docs" / f"{name}.json").read_text())
    assert (ROOT / "docs" / f"{name}.md").read_text() == _example(name).markdown(report)


@pytest.mark.parametrize("name", EXAMPLES)
def test_readme_quotes_the_generated_summary(name):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(rf"<!-- generated: docs/{name}\.md -->\n(.*?)<!-- end generated -->", readme, re.S)
    assert blocks, f"README.md has no block generated from docs/{name}.md"
    generated = (ROOT / "docs" / f"{name}.md").read_text()
    for block in blocks:
        assert block == generated, f"README.md's docs/{name}.md block differs from the file"


def test_readme_figures_exist():
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / path).is_file(), path


def test_readme_quotes_the_measured_distributed_table():
    """README's "Distributed training" quotes the table that ``bench/bench_distributed.py --results-md`` wrote."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    section = re.search(r"<!-- BEGIN distributed-cpu -->\n(.*?)<!-- END distributed-cpu -->", results, re.S)
    assert section, "bench/RESULTS.md has no distributed-cpu section (python bench/bench_distributed.py --results-md)"
    table = "".join(line + "\n" for line in section.group(1).splitlines() if line.startswith("|"))
    assert table.count("\n") > 2, "the distributed-cpu section has no table rows"
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- generated: bench/RESULTS\.md, section distributed-cpu -->\n(.*?)<!-- end generated -->",
                      readme, re.S)
    assert block, "README.md does not quote the distributed-cpu table"
    assert block.group(1) == table, "README.md's distributed table differs from bench/RESULTS.md"


def test_readme_quotes_the_plan_in_results_md():
    """The modelled ResNet-50 step times and launch count the README quotes are those of the plan section of
    bench/RESULTS.md (written by ``python -m orthokern.bench plan --results-md``), rounded as quoted."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    section = results[results.index("<!-- BEGIN plan -->"):results.index("<!-- END plan -->")]
    rows = {}
    for mode in ("accurate", "fast"):
        row = re.search(rf"^ResNet-50 FastOrthogonalSGD step.*? float32 +{mode} +(\d+) .*? ([\d.]+) ms +([\d.]+) ms "
                        rf"+([\d.]+) ms", section, re.M)
        assert row, f"no ResNet-50 {mode} row in the plan section"
        rows[mode] = (int(row.group(1)), float(row.group(4)))
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"the accurate ResNet-50 step is modelled at about {rows['accurate'][1]:.1f} ms graph-captured"
            in readme), rows
    assert f"the fast one at about {rows['fast'][1]:.1f} ms" in readme, rows
    quoted = int(re.search(r"about (\d+) launches", readme).group(1))
    assert abs(quoted - rows["accurate"][0]) <= 0.05 * rows["accurate"][0], (quoted, rows)
    # the optimiser step split into torch's SGD step and the orthogonalisation, as the plan prints it
    split = re.findall(r"SGD step alone \(.*?\): ([\d.]+) ms; the orthogonalisation \(.*?\): ([\d.]+) ms", section)
    assert len(split) == 2, split
    (sgd, ortho_acc), (_, ortho_fast) = [(float(a), float(b)) for a, b in split]
    assert f"{ortho_acc:.1f} ms of it the orthogonalisation and {sgd:.2f} ms torch's SGD step itself" in readme
    assert f"{ortho_fast:.1f} ms without the SGD step" in readme
    # the tall-skinny Gram-side cases over their memory floor
    floors = [re.search(rf"^{shape} +float32 +accurate .*? ([\d.]+) +fp64_tc", section, re.M).group(1)
              for shape in ("256x576x64", "1024x256x32")]
    assert f"are modelled at {floors[0]}x and {floors[1]}x their memory floor" in readme, floors


def test_readme_quotes_the_modelled_muon_ratio():
    """The README's "4096 x 4096 bfloat16 ... x the speed of torch's Muon step" is the plan section's ratio."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    section = results[results.index("<!-- BEGIN plan -->"):results.index("<!-- END plan -->")]
    m = re.search(r"^1x4096x4096 +bfloat16 +fast .*\n.*this fast path ([\d.]+)x its speed", section, re.M)
    assert m, "no Muon comparison for 1x4096x4096 bfloat16 fast in the plan section"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"On a 4096 × 4096 bfloat16 matrix the fast path is modelled at {m.group(1)}x the speed of torch's Muon "
            "step" in readme)
