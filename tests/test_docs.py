"""The docs describe what the code accepts."""

import re
from pathlib import Path

from memtrain.config import SECTIONS, TOP_LEVEL, section_keys

DOCS = Path(__file__).parents[1] / "docs"


def test_job_file_reference_covers_every_key():
    text = (DOCS / "job-file.md").read_text()
    for key in TOP_LEVEL:
        assert re.search(rf"`{key}`", text), f"{key} is not documented"
    for section in SECTIONS:
        assert f"## `[{section}]`" in text, section
        for key in section_keys(section) or ():
            assert re.search(rf"`{key}`", text), f"{section}.{key} is not documented"


def test_example_job_file_is_valid():
    from memtrain.config import load

    cfg = load(DOCS / "example-job.toml")
    assert cfg.model_spec().sizes == (64, 128, 10)
