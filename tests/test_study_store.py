"""The study's results on disk: unreadable result files, concurrent studies, a result's identity."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest
import torch

from deepres.cli import main as deepres_main
from deepres.study.convergence.presets import StudyConfig
from deepres.study.convergence.sweep import run_units
from deepres.study.shared.files import FolderLockedError, OutputLock, atomic_write
from deepres.study.shared.report import write_json
from deepres.study.shared.store import CorruptResultError, CorruptResultWarning, ResultStore, unit_identity
from tests.helpers import TINY, TINY_FLAGS

UNIT = {"kind": "resnet", "depth": 3}


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(os.urandom(len(data)))
    elif how == "pickle":  # a pickle of something the safe loader refuses
        path.write_bytes(pickle.dumps({"unit": UNIT, "result": {"x": object}}, protocol=2))
    elif how == "other unit":
        torch.save({"unit": {"kind": "resnet", "depth": 99}, "result": {}}, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "random", "pickle", "other unit"])
def test_an_unreadable_result_is_set_aside_and_counts_as_missing(tmp_path, how):
    store = ResultStore(tmp_path)
    store.save(UNIT, {"x": torch.ones(1000)})
    path = store.path(UNIT)
    _damage(path, how)
    with pytest.warns(CorruptResultWarning, match=str(path)):
        assert not store.has(UNIT)
    assert not path.exists() and path.with_name(path.name + ".corrupt").is_file()
    assert store.corrupt == [{"file": str(path), "renamed_to": str(path) + ".corrupt",
                              "reason": store.corrupt[0]["reason"]}]
    # Recomputing writes a fresh file; a second bad one gets its own name.
    store.save(UNIT, {"x": torch.zeros(2)})
    assert store.load(UNIT)["x"].tolist() == [0.0, 0.0]
    _damage(path, how)
    with pytest.warns(CorruptResultWarning):
        assert not store.has(UNIT)
    assert path.with_name(path.name + ".1.corrupt").is_file()


@pytest.mark.parametrize("how", ["truncated", "random", "pickle"])
def test_loading_an_unreadable_result_names_the_file_and_never_suggests_unsafe_loading(tmp_path, how):
    store = ResultStore(tmp_path)
    store.save(UNIT, {"x": torch.ones(1000)})
    path = store.path(UNIT)
    _damage(path, how)
    with pytest.warns(CorruptResultWarning), pytest.raises(CorruptResultError) as error:
        store.load(UNIT)
    message = str(error.value)
    assert str(path) in message and "rerun" in message
    assert "weights_only" not in message and error.value.__cause__ is None
    assert error.value.__suppress_context__
    assert path.with_name(path.name + ".corrupt").is_file()


def test_a_cut_short_unit_file_is_recomputed_by_the_next_run(tmp_path):
    config = StudyConfig(**TINY)
    units = [u for u in config.units() if u["kind"] == "resnet"]
    run_units(units, ResultStore(tmp_path), progress=False)
    store = ResultStore(tmp_path)
    expected = {json.dumps(u, sort_keys=True): store.load(u)["outputs"] for u in units}
    _damage(store.path(units[0]), "truncated")
    with pytest.warns(CorruptResultWarning, match=str(store.path(units[0]))):
        counts = run_units(units, store, progress=False)
    assert counts == {"total": len(units), "resumed": len(units) - 1, "ran": 1, "failed": 0}
    for unit in units:
        assert torch.equal(store.load(unit)["outputs"], expected[json.dumps(unit, sort_keys=True)])


def test_an_unreadable_failure_record_is_set_aside(tmp_path):
    store = ResultStore(tmp_path)
    store.save_failure(UNIT, "worker died")
    assert [f["error"] for f in store.failures()] == ["worker died"]
    store.failure_path(UNIT).write_text('{"unit": ')
    with pytest.warns(CorruptResultWarning):
        assert store.failures() == []
    assert not store.failure_path(UNIT).exists()


def test_the_cli_reports_a_corrupt_file_recomputes_it_and_records_it(tmp_path, capsys):
    args = ["study", *TINY_FLAGS, "--out", str(tmp_path)]
    assert deepres_main(args) == 0
    victim = sorted((tmp_path / "units").glob("resnet-*.pt"))[0]
    _damage(victim, "random")
    capsys.readouterr()
    assert deepres_main(args) == 0
    captured = capsys.readouterr()
    assert f"unreadable result file {victim}" in captured.err and "weights_only" not in captured.err
    assert "1 units run" in captured.out
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["units"]["ran"] == 1 and [c["file"] for c in report["corrupt_files"]] == [str(victim)]
    assert victim.is_file() and victim.with_name(victim.name + ".corrupt").is_file()


def test_concurrent_writers_of_one_file_never_share_a_temporary_file(tmp_path, monkeypatch):
    # The interleaving that broke study.json: a second writer runs while the first one is
    # between writing its temporary file and renaming it. With a fixed temporary name the
    # second rename takes the first writer's file away (FileNotFoundError).
    target = tmp_path / "study.json"
    real_replace = os.replace
    nested = []

    def replace(src, dst):
        if not nested:
            nested.append(dst)
            write_json({"writer": 2}, target)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_json({"writer": 1}, target)
    assert json.loads(target.read_text()) == {"writer": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"]


def test_atomic_write_leaves_nothing_behind_when_the_writer_fails(tmp_path):
    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_a_second_study_into_a_busy_folder_exits_with_one_line_naming_out(tmp_path, capsys):
    out = tmp_path / "out"
    with OutputLock(out).held():
        assert deepres_main(["study", *TINY_FLAGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and str(out) in err
    assert f"pid {os.getpid()}" in err and "--wait" in err
    assert not (out / "units").exists()  # no work was done


def test_with_wait_a_second_study_waits_for_the_first(tmp_path, capsys):
    out = tmp_path / "out"
    lock = OutputLock(out)
    lock.acquire()
    released = []

    def release_later():
        time.sleep(1.0)
        released.append(time.monotonic())
        lock.release()

    thread = threading.Thread(target=release_later)
    thread.start()
    try:
        assert deepres_main(["study", *TINY_FLAGS, "--out", str(out), "--wait"]) == 0
    finally:
        thread.join()
    assert released and "waiting for it to end" in capsys.readouterr().err
    assert json.loads((out / "study.json").read_text())["units"]["ran"] == len(StudyConfig(**TINY).units())


def test_the_lock_ends_with_the_process_that_holds_it(tmp_path):
    code = ("import sys, time; from deepres.study.shared.files import OutputLock; "
            f"lock = OutputLock({str(tmp_path)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(tmp_path).held():  # a killed holder leaves no stale lock
        pass


def test_results_are_keyed_by_backend_and_device_type(tmp_path):
    units = [u for u in StudyConfig(**TINY).units() if u["kind"] == "resnet"]
    first = run_units(units, ResultStore(tmp_path, backend="torch"), progress=False)
    assert first["ran"] == len(units)
    # Another backend does not resume from the first one's results...
    other = ResultStore(tmp_path, backend="reference")
    assert run_units(units, other, progress=False)["ran"] == len(units)
    # ... and each backend finds its own.
    assert run_units(units, ResultStore(tmp_path, backend="torch"), progress=False)["resumed"] == len(units)
    assert ResultStore(tmp_path, device="cuda:1").identity == {"backend": "auto", "device": "cuda"}
    assert ResultStore(tmp_path).path(units[0]) != ResultStore(tmp_path, device="cuda").path(units[0])
    with pytest.raises(ValueError, match="backend"):
        run_units(units, other, backend="torch", progress=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        unit_identity(backend="foo")


def test_a_rerun_with_another_backend_runs_its_own_units_and_records_the_backend(tmp_path, capsys):
    args = ["study", *TINY_FLAGS, "--out", str(tmp_path)]
    total = len(StudyConfig(**TINY).units())
    assert deepres_main([*args, "--backend", "torch"]) == 0
    assert json.loads((tmp_path / "study.json").read_text())["unit_identity"] == {"backend": "torch",
                                                                                  "device": "cpu"}
    capsys.readouterr()
    # The report files there are another configuration's: refused before any work, unless --replace.
    assert deepres_main([*args, "--backend", "reference"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert deepres_main([*args, "--backend", "reference", "--replace"]) == 0
    assert f"{total} units run, 0 resumed (backend reference, cpu)" in capsys.readouterr().out
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["unit_identity"] == {"backend": "reference", "device": "cpu"}
    assert report["units"] == {"total": total, "resumed": 0, "ran": total, "failed": 0}
