"""Every option is checked before any work: repeated axis values, units too large for the machine,
numeric bounds, unwritable destinations; untrusted files are refused in deepres's words."""

from __future__ import annotations

import sys

import pytest
import torch

from deepres._checks import resolve_checkpoint_every
from deepres.cli import main as deepres_main
from deepres.study.convergence.presets import StudyConfig
from deepres.study.phase.config import PhaseConfig, PhaseConfigError
from deepres.study.shared import command
from deepres.study.shared.data import load_task
from deepres.study.shared.memory import UnitTooLargeError, check_unit_memory
from deepres.study.shared.store import read_torch_file
from tests.helpers import TINY_FLAGS


def _refused(argv, capsys, flag):
    """``deepres ARGV`` exits 2 with one line on stderr that names ``flag``."""
    try:
        status = deepres_main(argv)
    except SystemExit as exit:  # argparse's own errors end the parse
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    return err


# ---------------------------------------------------------------- 6. repeated axis values

@pytest.mark.parametrize(("flag", "value"), [
    ("--depths", "4,4"), ("--widths", "2,2"), ("--dims", "2,2"), ("--alpha-axis", "1,1"),
    ("--lazy-alphas", "1,1"), ("--seeds", "0,0"), ("--alphas", "1,1.0"), ("--etas", "0.1,0.1"),
    ("--steps", "2,2"),
])
def test_a_repeated_axis_value_is_refused_before_any_work(flag, value, capsys, tmp_path):
    out = tmp_path / "out"
    err = _refused(["study", *TINY_FLAGS, "--out", str(out), flag, value], capsys, flag)
    assert "repeated" in err
    assert not out.exists()


@pytest.mark.parametrize(("argv", "flag"), [
    (["--depths", "16,16,32"], "--depths"), (["--phase-dims", "32,32"], "--phase-dims"),
    (["--phase-points", "1:1,1:1"], "--phase-points"),
])
def test_a_repeated_phase_value_is_refused(argv, flag, capsys, tmp_path):
    _refused(["study", "--preset", "phase", "--out", str(tmp_path / "out"), *argv], capsys, flag)


def test_the_configurations_refuse_repeated_values_too():
    for name in ("depths", "seeds", "alphas", "lazy_alphas", "alpha_axis"):
        value = [4.0, 4.0] if name in ("alphas", "lazy_alphas", "alpha_axis") else [4, 4]
        with pytest.raises(ValueError, match=f"{name} must not repeat"):
            StudyConfig(**{name: value})
    with pytest.raises(PhaseConfigError, match="depths must not repeat"):
        PhaseConfig(depths=[16, 16, 32])


# ---------------------------------------------------------------- 7. units too large

def test_a_unit_too_large_for_the_machine_is_refused_naming_it(capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["study", "--depths", "4,100000", "--widths", "1024", "--dims", "64", "--replicas", "512",
            "--out", str(out), "--no-progress"]
    err = _refused(argv, capsys, "--allow-large-units")
    assert "resnet unit depth=100000 hidden=1024 dim=64 replicas=512" in err and "TB" in err
    assert not out.exists()


def test_allow_large_units_skips_the_memory_check(capsys, tmp_path, monkeypatch):
    class Reached(Exception):
        pass

    def run_locked(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(command, "run_locked", run_locked)
    argv = ["study", "--depths", "4,100000", "--widths", "1024", "--dims", "64", "--replicas", "512",
            "--out", str(tmp_path / "out"), "--no-progress", "--allow-large-units"]
    with pytest.raises(Reached):  # past every check, where the work would start
        deepres_main(argv)


def test_check_unit_memory_compares_the_largest_unit():
    units = [{"kind": "resnet", "depth": depth} for depth in (4, 64)]
    check_unit_memory(units, lambda unit: unit["depth"] * 10.0, "cpu", available=640)
    with pytest.raises(UnitTooLargeError, match="resnet unit depth=64 needs about 641 B"):
        check_unit_memory(units, lambda unit: unit["depth"] * 10.0 + 1, "cpu", available=640)


# ---------------------------------------------------------------- 8. numeric bounds

@pytest.mark.parametrize(("argv", "flag"), [
    (["study", "--threads", "100000"], "--threads"), (["study", "--threads", "20000"], "--threads"),
    (["study", "--preset", "phase", "--phase-points", "1:1e308"], "--phase-points"),
    (["study", "--depths", str(10**30)], "--depths"), (["study", "--seed", str(10**30)], "--seed"),
    (["study", "--preset", "phase", "--phase-dim-depth", "0"], "--phase-dim-depth"),
    (["bench", "--threads", "100000"], "--threads"), (["bench", "--depths", str(10**30)], "--depths"),
])
def test_numeric_options_are_bounded(argv, flag, capsys, tmp_path):
    _refused([*argv, "--out" if argv[0] == "study" else "--json",
              str(tmp_path / ("out" if argv[0] == "study" else "x.json"))], capsys, flag)


def test_a_huge_checkpoint_every_is_one_segment():
    import deepres
    from tests.helpers import random_stack_inputs

    assert resolve_checkpoint_every(8, 10**30) == 8
    assert resolve_checkpoint_every(8, 3) == 3
    h, u, v = random_stack_inputs(3, 4, 2, 5)
    options = {"multiplier": 0.1, "pre_scale": 0.25, "backend": "torch"}
    huge = deepres.residual_stack(h, u, v, checkpoint_every=10**30, **options)  # was a cast error
    assert torch.equal(huge, deepres.residual_stack(h, u, v, **options))


# ---------------------------------------------------------------- 9. unwritable destinations

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
@pytest.mark.parametrize(("argv", "flag"), [
    (["study", "--out", "/proc/x"], "--out"), (["study", "--out", "/sys/x"], "--out"),
    (["study", "--preset", "phase", "--out", "/sys/x"], "--out"),
    (["bench", "--quick", "--json", "/sys/x.json"], "--json"),
    (["bench", "--quick", "--csv", "/proc/x.csv"], "--csv"),
    (["bench", "--quick", "--plot", "/sys/x.png"], "--plot"),
])
def test_an_unwritable_destination_is_refused_before_any_work(argv, flag, capsys):
    err = _refused(argv, capsys, flag)
    assert "written" in err or "writable" in err


# ---------------------------------------------------------------- 10. untrusted task files

class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_task_file_holding_code_is_refused_without_unsafe_advice(tmp_path, capsys):
    path = tmp_path / "task.pt"
    torch.save({"x": torch.ones(2, 1), "y": _Code()}, path)
    for load in (load_task, read_torch_file):
        with pytest.raises(ValueError, match="the safe loader refused") as error:
            load(path)
        assert "weights_only" not in str(error.value)
    assert "this ran" not in capsys.readouterr().out
