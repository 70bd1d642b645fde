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
