import pytest
from click.testing import CliRunner

from memtrain import __version__
from memtrain.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"memtrain, version {__version__}"


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "Train feedforward networks" in result.output
    for name in main.commands:
        assert name in result.output


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_subcommand_has_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0 and result.output.startswith(f"Usage: main {name} [OPTIONS]")
    assert len(result.output.splitlines()) > 5


def test_profile_command():
    result = CliRunner().invoke(main, ["profile", "--layers", "32,16,4", "--optimizer", "adam", "--steps", "2"])
    assert result.exit_code == 0 and "total (peak)" in result.output


def test_profile_exit_status_when_over_tolerance(monkeypatch):
    import memtrain.profiler.verify as verify

    monkeypatch.setattr(verify, "ABS_TOLERANCE", 0)
    result = CliRunner().invoke(main, ["profile", "--layers", "32,16,4", "--tolerance", "0"])
    assert result.exit_code == 1 and "OVER TOLERANCE" in result.output


def test_a_real_bug_keeps_its_traceback_while_user_errors_are_one_line(monkeypatch):
    """Only MemtrainError (and click's usage errors) become "memtrain: error: ..." and exit 2."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from memtrain.cli import main
    from memtrain.profiler import estimate as est

    def broken(*a, **k):
        return 1 / 0

    monkeypatch.setattr(est, "linear_terms", broken)
    r = CliRunner().invoke(main, ["estimate", "--layers", "4,3,2"])
    assert isinstance(r.exception, ZeroDivisionError) and r.exit_code == 1  # not turned into "error: ..."
    assert "memtrain: error" not in r.output
    # the same through the real entry point: a traceback on stderr
    code = ("import sys; from memtrain.profiler import estimate as e; e.linear_terms = lambda s: 1 / 0; "
            "from memtrain.cli import main; sys.argv = ['memtrain', 'estimate', '--layers', '4,3,2']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" in p.stderr and "ZeroDivisionError" in p.stderr
    user = subprocess.run([sys.executable, "-m", "memtrain.cli", "estimate", "--layers", "4,3,2", "--activation",
                           "relu6"], capture_output=True, text=True)
    assert user.returncode == 2 and user.stderr.count("\n") == 1
    assert user.stderr.startswith("memtrain: error: activation: unknown 'relu6'")
