"""Every bad option of `deepres study`, `deepres demo` and `deepres` itself: one line naming the
option and the value, exit status 2, and no work done."""

from __future__ import annotations

import os

import pytest
import torch

from deepres.cli import main
from tests.helpers import TINY_FLAGS


def _run(argv, capsys):
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse's own errors exit
        status = exit_info.code
    return status, capsys.readouterr().err.strip()


def _assert_one_line_error(status, err, *names):
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


STUDY_ERRORS = [
    ("--bootstrap", "0"),
    ("--bootstrap", "1"),
    ("--samples", "0"),
    ("--backend", "foo"),
    ("--device", "gpu"),
    ("--device", "meta"),
    ("--replicas", "3"),
    ("--replicas", "1"),
    ("--particles", "7"),
    ("--lazy-hidden", "3"),
    ("--alphas", "nan"),
    ("--alphas", "1,inf"),
    ("--etas", "-0.1"),
    ("--lazy-alphas", "0"),
    ("--depths", "0,4"),
    ("--depths", ","),
    ("--steps", "-1"),
    ("--seeds", "x"),
    ("--records", "0"),
    ("--ref-ratio", "2"),
    ("--solver", "rk5"),
    ("--particle-init", "grid"),
    ("--task", "mnist"),
    ("--activation", "sigmoid"),
    ("--threads", "0"),
    ("--max-retries", "-1"),
    ("--dtype", "float16"),
    ("--preset", "huge"),
    ("--address", "auto"),
]


@pytest.mark.parametrize(("option", "value"), STUDY_ERRORS)
def test_study_rejects_a_bad_option_on_one_line_before_any_work(option, value, tmp_path, capsys):
    out = tmp_path / "out"
    status, err = _run(["study", *TINY_FLAGS, "--out", str(out), option, value], capsys)
    _assert_one_line_error(status, err, "deepres study", option, value)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")
def test_study_without_cuda_rejects_device_cuda(tmp_path, capsys):
    status, err = _run(["study", *TINY_FLAGS, "--out", str(tmp_path / "out"), "--device", "cuda"], capsys)
    _assert_one_line_error(status, err, "--device", "'cuda'", "CUDA is not available")
    assert not (tmp_path / "out").exists()


def test_study_rejects_triton_where_it_cannot_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    status, err = _run(["study", *TINY_FLAGS, "--out", str(tmp_path / "out"), "--backend", "triton"], capsys)
    _assert_one_line_error(status, err, "--backend", "'triton'", "cannot run on cpu")


def test_study_rejects_an_out_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status, err = _run(["study", *TINY_FLAGS, "--out", str(blocker / "out")], capsys)
    _assert_one_line_error(status, err, "--out", str(blocker / "out"), "is a file")


def test_study_rejects_an_out_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status, err = _run(["study", *TINY_FLAGS, "--out", str(blocker)], capsys)
    _assert_one_line_error(status, err, "--out", str(blocker), "not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_study_rejects_a_read_only_out(tmp_path, capsys):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        status, err = _run(["study", *TINY_FLAGS, "--out", str(folder / "out")], capsys)
    finally:
        folder.chmod(0o755)
    _assert_one_line_error(status, err, "--out", str(folder / "out"), "not writable")


def test_study_rejects_an_out_it_may_not_write(tmp_path, capsys, monkeypatch):
    # As root (CI) no folder is read-only to access(2); stand in for one that is.
    import deepres.options

    monkeypatch.setattr(deepres.options.os, "access", lambda path, mode: False)
    status, err = _run(["study", *TINY_FLAGS, "--out", str(tmp_path / "out")], capsys)
    _assert_one_line_error(status, err, "--out", str(tmp_path / "out"), "not writable")
    assert not (tmp_path / "out").exists()


DEMO_ERRORS = [
    ("--depth", "0"),
    ("--dim", "-1"),
    ("--hidden", "x"),
    ("--batch", "0"),
    ("--device", "gpu"),
    ("--dtype", "float16"),
    ("--seed", "1.5"),
]


@pytest.mark.parametrize(("option", "value"), DEMO_ERRORS)
def test_demo_rejects_a_bad_option_on_one_line(option, value, capsys):
    status, err = _run(["demo", "--depth", "4", "--dim", "2", "--hidden", "2", "--batch", "2", option, value],
                       capsys)
    _assert_one_line_error(status, err, "deepres demo", option, value)
    assert "deepres demo: DeepResNet" not in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")
def test_demo_without_cuda_rejects_device_cuda(capsys):
    status, err = _run(["demo", "--device", "cuda:0"], capsys)
    _assert_one_line_error(status, err, "deepres demo", "--device", "'cuda:0'", "CUDA is not available")


@pytest.mark.parametrize("argv", [["frobnicate"], ["--frobnicate"], ["study", "--frobnicate", "1"]])
def test_deepres_rejects_an_unknown_command_or_option_on_one_line(argv, capsys):
    status, err = _run(argv, capsys)
    _assert_one_line_error(status, err, "deepres", argv[-1] if argv[0] != "study" else "--frobnicate")
