"""The output folder cannot be turned against the user; stored results are validated; provenance.

Links planted in the folder are replaced, never followed; report files that a deepres
study of the same configuration did not write are refused unless ``--replace``; a
stored result of the right unit but the wrong contents is set aside and recomputed;
every file gets one mode; every report file says where it comes from.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
import torch

from deepres.cli import main as deepres_main
from deepres.study.convergence.presets import PRESETS, StudyConfig
from deepres.study.convergence.units import result_schema
from deepres.study.shared.files import OutputLock, UnsafeFileError, atomic_write, file_mode
from deepres.study.shared.outputs import sidecar_path
from deepres.study.shared.store import CorruptResultWarning, ResultStore
from tests.helpers import TINY, TINY_FLAGS


def _study(out, *extra):
    return deepres_main(["study", *TINY_FLAGS, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny study, run once (read, never changed, by the tests that take it)."""
    out = tmp_path_factory.mktemp("study")
    assert _study(out) == 0
    return out


# ---------------------------------------------------------------- 1. links are never followed

def test_atomic_write_replaces_a_planted_link_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.csv").symlink_to(victim)
    atomic_write(tmp_path / "out.csv", lambda handle: handle.write(b"table"))
    assert victim.read_text() == "precious"
    assert not (tmp_path / "out.csv").is_symlink() and (tmp_path / "out.csv").read_text() == "table"


def test_the_lock_refuses_a_planted_link_or_hard_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".lock").symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        OutputLock(folder).acquire()
    (folder / ".lock").unlink()
    os.link(victim, folder / ".lock")
    with pytest.raises(UnsafeFileError, match="hard link"):
        OutputLock(folder).acquire()
    assert victim.read_text() == "precious"


def test_a_study_never_writes_through_links_planted_in_its_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    victims = {name: tmp_path / f"victim-{name}" for name in ("measurements.csv", "fits.csv", ".lock")}
    for name, victim in victims.items():
        victim.write_text("precious")
        (out / name).symlink_to(victim)
    # The lock first: a linked .lock is refused on one line, before any work.
    assert _study(out, "--replace") == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and len(err.strip().splitlines()) == 1
    (out / ".lock").unlink()
    assert _study(out) == 2  # the linked tables are not this study's (item 2)
    assert "--replace" in capsys.readouterr().err
    assert _study(out, "--replace") == 0
    assert all(victim.read_text() == "precious" for victim in victims.values())
    assert not any((out / name).is_symlink() for name in ("measurements.csv", "fits.csv"))
    assert not (out / ".lock").exists()  # removed when the lock is released (item 15)


def test_a_linked_units_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "units").symlink_to(elsewhere)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        ResultStore(tmp_path / "out")


# ---------------------------------------------------------------- 2. files deepres did not write

@pytest.mark.parametrize("name", ["measurements.csv", "fits.csv", "study.json"])
def test_a_report_file_deepres_did_not_write_is_refused_unless_replace(tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("my own notes\n")
    assert _study(out) == 2
    err = capsys.readouterr().err
    assert name in err and "--replace" in err and len(err.strip().splitlines()) == 1
    assert (out / name).read_text() == "my own notes\n"
    assert not (out / "units").exists()  # refused before any work


def test_an_edited_table_of_a_finished_study_is_refused(finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    assert _study(out) == 0  # the same configuration: resumed, its own files replaced
    capsys.readouterr()
    with open(out / "fits.csv", "a") as handle:
        handle.write("a line of mine\n")
    assert _study(out) == 2
    assert "fits.csv" in capsys.readouterr().err
    assert _study(out, "--replace") == 0


# ---------------------------------------------------------------- 3. stored results are validated

def _tiny_store(tmp_path):
    store = ResultStore(tmp_path, schema=result_schema)
    unit = next(u for u in StudyConfig(**TINY).units() if u["kind"] == "lazy_limit")
    good = {name: torch.zeros(2) for name in ("d_inf", "ode_movement", "nonfinite")} | {"seconds": 1.0}
    return store, unit, good


def test_a_stored_result_with_missing_or_misshapen_entries_is_set_aside(tmp_path):
    store, unit, good = _tiny_store(tmp_path)
    store.save(unit, good)
    assert store.has(unit)
    for broken in ({k: v for k, v in good.items() if k != "d_inf"}, good | {"d_inf": torch.zeros(3)},
                   good | {"seconds": "soon"}):
        store.save(unit, broken)
        with pytest.warns(CorruptResultWarning, match="incomplete result"):
            assert not store.has(unit)
    assert len(list((tmp_path / "units").glob("*.corrupt"))) == 3


def test_a_stored_result_of_another_format_is_set_aside(tmp_path):
    store, unit, good = _tiny_store(tmp_path)
    store.save(unit, good)
    payload = torch.load(store.path(unit), weights_only=True)
    assert payload["format"] == 1
    torch.save(payload | {"format": 99}, store.path(unit))
    with pytest.warns(CorruptResultWarning, match="result format 99"):
        assert not store.has(unit)
    del payload["format"]  # files written before the field existed are of format 1
    torch.save(payload, store.path(unit))
    assert store.has(unit)


def test_every_schema_matches_what_the_units_compute(finished):
    store = ResultStore(finished, schema=result_schema)
    units = StudyConfig(**TINY).units()
    assert all(store.has(unit) for unit in units)  # a schema drift would set them aside


# ---------------------------------------------------------------- 11. one file mode

def test_every_file_of_a_study_has_the_one_mode(finished):
    expected = file_mode()
    files = [p for p in finished.rglob("*") if p.is_file()]
    assert {"study.json", "measurements.csv", "fits.csv", "fits.provenance.json"} <= {p.name for p in files}
    assert any(p.suffix == ".pt" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: expected for p in files}


def test_the_mode_follows_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "private", lambda handle: handle.write(b"x"))
        assert file_mode() == 0o600
    finally:
        os.umask(old)
    atomic_write(tmp_path / "shared", lambda handle: handle.write(b"x"))
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o666 & ~old


# ---------------------------------------------------------------- 12. provenance

def test_study_json_and_every_table_carry_their_provenance(finished):
    report = json.loads((finished / "study.json").read_text())
    source = report["provenance"]
    assert source["preset"] == "quick"
    assert "--depths 2,4" in source["command"] and "study" in source["command"]
    assert source["deepres_version"]
    assert source["git_commit"] == "not a git checkout" or len(source["git_commit"]) == 40
    for table in ("measurements.csv", "fits.csv"):
        side = json.loads(sidecar_path(finished / table).read_text())
        assert side["file"] == table and side["config_digest"] == source["config_digest"]
        assert side["sha256"] == hashlib.sha256((finished / table).read_bytes()).hexdigest()
        assert side["command"] == source["command"]


def test_the_task_cannot_be_mistaken_for_a_preset():
    assert StudyConfig().task not in PRESETS and StudyConfig().task not in ("phase",)
    assert StudyConfig(task="paper").task == StudyConfig().task  # the old name still reads


def test_a_folder_written_before_provenance_and_the_task_rename_still_resumes(finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(finished, out)
    report = json.loads((out / "study.json").read_text())
    del report["provenance"]
    report["config"]["task"] = "paper"  # as an earlier deepres wrote it
    (out / "study.json").write_text(json.dumps(report))
    for table in ("measurements.csv", "fits.csv"):
        sidecar_path(out / table).unlink()
    assert _study(out) == 0
    assert f"0 units run, {len(StudyConfig(**TINY).units())} resumed" in capsys.readouterr().out


def test_bench_outputs_never_write_through_a_link(tmp_path):
    from deepres.benchmark.report import write_csv, write_json

    for name, write in (("report.json", write_json), ("report.csv", write_csv)):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious")
        (tmp_path / name).symlink_to(victim)
        write({"results": []}, tmp_path / name)
        assert victim.read_text() == "precious" and not (tmp_path / name).is_symlink()
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode()
