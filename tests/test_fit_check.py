"""A given batch, layer or data set that cannot fit is one line before anything is
allocated (bytes needed and available, the largest batch that fits), exit 2; an
allocation that still fails is the same kind of line, never a traceback.

The commands run in a child under RLIMIT_AS (as tests/test_budget.py), so that the
code before this check (which allocated first) fails fast instead of eating the host."""

import json

import pytest
from click.testing import CliRunner
from test_budget import capped

from memtrain.cli import main

ROOM = 1024**3


def train(*args, tmp_path):
    out = capped(f"""
        from memtrain.cli import main
        main({["train", *args, "--epochs", "1", "--name", "fit", "--device", "cpu"]!r})
    """, room=ROOM, cwd=tmp_path)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize("args,needs", [
    # a batch within the data set's rows (a larger one is refused before any plan: test_job.py)
    (["--layers", "64,200000,10", "--dataset", "digits", "--batch-size", "1000"],
     "training.batch_size: batch 1,000 needs 2.46 GiB"),
    (["--layers", "64,100000000,10", "--dataset", "digits", "--batch-size", "32"],
     "training.batch_size: batch 32 needs 147.52 GiB"),
    (["--layers", "10,16,2", "--dataset", "synthetic:classification(1000000000,10,2)", "--batch-size", "32"],
     "dataset: 'synthetic:classification(1000000000,10,2)' needs 81.96 GiB (88,000,000,000 B) to generate but"),
])
def test_what_cannot_fit_is_one_line_before_allocating(args, needs, tmp_path):
    code, out, err = train(*args, tmp_path=tmp_path)
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert needs in err and "is available (RLIMIT_AS now)" in err, err
    assert not (tmp_path / "runs" / "fit" / "checkpoints").exists() or not any(
        (tmp_path / "runs" / "fit" / "checkpoints").iterdir())


def test_the_error_names_the_largest_batch_that_fits(tmp_path):
    code, _, err = train("--layers", "64,200000,10", "--dataset", "digits", "--batch-size", "1000", tmp_path=tmp_path)
    assert code == 2, err
    largest = int(err.split("the largest batch that fits is ")[1].strip().replace(",", ""))
    assert 0 < largest < 1000


def test_an_allocation_that_still_fails_is_one_line(monkeypatch):
    from memtrain.profiler import estimate as est

    def boom(*a, **k):
        raise MemoryError("Unable to allocate 1.00 TiB for an array with shape (1099511627776,) and data type uint8")

    monkeypatch.setattr(est, "report", boom)
    r = CliRunner().invoke(main, ["estimate", "--layers", "64,10", "--batch-size", "8"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memtrain: error: out of memory: Unable to allocate 1.00 TiB")
    assert "is available" in lines[0]


def test_a_batch_that_fits_still_trains(tmp_path):
    code, out, err = train("--layers", "64,16,10", "--dataset", "digits", "--batch-size", "64", "--log-format",
                           "json", tmp_path=tmp_path)
    assert code == 0, err[-2000:]
    assert any(json.loads(line).get("event") == "summary" for line in out.splitlines() if line.startswith("{"))
