from pathlib import Path

from memtrain.clidoc import render


def test_cli_reference_is_current():
    doc = Path(__file__).parents[1] / "docs" / "cli.md"
    assert doc.read_text() == render(), "docs/cli.md is stale: run python -m memtrain.clidoc > docs/cli.md"
