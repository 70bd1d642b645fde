"""The docs describe what the code accepts."""

import re
from pathlib import Path

from memtrain.config import SCHEMA, SECTIONS

DOCS = Path(__file__).parents[1] / "docs"


def test_job_file_reference_covers_every_key():
    text = (DOCS / "job-file.md").read_text()
    for section, keys in SCHEMA.items():
        for key in keys:
            if section == "" and key in SECTIONS:  # sections themselves
                assert f"## `[{key}]`" in text, key
            else:
                assert re.search(rf"`{key}`", text), f"{section}.{key} is not documented"


def test_example_job_file_is_valid():
    from memtrain.config import load

    cfg = load(DOCS / "example-job.toml")
    assert cfg.model_spec().sizes == (64, 128, 10)
