"""Figures in docs/getting-started.md are what the commands print (docs/regen.py writes them)."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"
spec = importlib.util.spec_from_file_location("regen", DOCS / "regen.py")
regen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regen)


def test_getting_started_figures_are_what_the_commands_print():
    """Re-runs the doc's `check` transcripts (estimate, autobatch: a few seconds) in a scratch dir."""
    text = (DOCS / "getting-started.md").read_text()
    blocks = [m for m in regen.MARK.finditer(text) if regen.options(m.group("opts")).get("check")]
    assert len(blocks) == 2
    drift = regen.drifted(text)
    assert not drift, "docs/getting-started.md drifted; run python docs/regen.py:\n" + "\n".join(
        f"--- doc\n{old}--- now\n{new}" for old, new in drift)


def test_cut_and_mask_are_what_the_check_compares():
    out = "model x\nplan y\n\ncategory  bytes\ntotal  397,480\nfinished in 8.2 s\n"
    assert regen.cut(out, {"from": "^category"}) == ["...", "category  bytes", "total  397,480",
                                                     "finished in 8.2 s"]
    assert regen.cut(out, {"keep": "^(model|total)"}) == ["model x", "...", "total  397,480", "..."]
    assert regen.cut(out, {"tail": "2"}) == ["...", "total  397,480", "finished in 8.2 s"]
    opts = {"mask": r"peak [\d,]+ B"}
    assert regen.masked("peak 8,135,163 B in 2.29 s", opts) == regen.masked("peak 8,135,096 B in 0.1 s", opts)
    assert regen.masked("total 397,480 in 1 s", {}) != regen.masked("total 435,920 in 1 s", {})
