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


def test_bench_commands_name_the_venv_python():
    """`make` installs into .venv: a bare `python bench/...` would run the system Python without memtrain."""
    for doc in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]:
        bare = re.findall(r"(?:^|[\s`])python3? bench/\S+", doc.read_text(), re.M)
        assert not bare, f"{doc.name}: {bare}"


def test_make_demo_says_how_to_run_memtrain():
    import subprocess

    out = subprocess.run(["make", "-n", "demo"], cwd=DOCS.parent, capture_output=True, text=True, check=True).stdout
    tail = out[out.index("memtrain train docs/example-job.toml"):]
    assert ".venv/bin/memtrain" in tail and "source .venv/bin/activate" in tail


def test_make_demo_installs_memtrain_alone_and_make_test_the_test_extra():
    """The demo needs no CuPy, NVRTC, Ray or ruff (the test extra made .venv 1.5 GB)."""
    import subprocess

    def recipe(target):
        return subprocess.run(["make", "-n", "-B", target], cwd=DOCS.parent, capture_output=True, text=True,
                              check=True).stdout

    demo = [line for line in recipe("demo").splitlines() if "pip install" in line]
    assert demo and all("[test]" not in line for line in demo), demo
    assert any(line.endswith("pip install -q -e .") for line in demo), demo
    assert "pip install -q -e '.[test]'" in recipe("test")
