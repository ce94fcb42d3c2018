"""The ``deepres`` command: help, dispatch to the subcommands, the demo."""

import subprocess
import sys

import pytest

from deepres.cli import build_parser, main


def test_help_lists_every_command():
    run = subprocess.run([sys.executable, "-m", "deepres.cli", "--help"], capture_output=True, text=True,
                         check=True)
    for command in ("study", "bench", "demo"):
        assert f"deepres {command}" in run.stdout


@pytest.mark.parametrize("command", ["study", "bench", "demo"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "--device" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_demo_runs_and_reports_every_engine(capsys):
    assert main(["demo", "--depth", "32", "--dim", "4", "--hidden", "3", "--batch", "5",
                 "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "L=32 residual blocks" in out
    for label in ("plain autograd", "checkpoint_every=None", "checkpoint_every=sqrt"):
        assert label in out
    # The engines' gradients equal the plain autograd gradient (float64).
    differences = [float(line.rsplit("grad rel. diff", 1)[1]) for line in out.splitlines()
                   if "grad rel. diff" in line]
    assert len(differences) == 3 and max(differences) < 1e-12
