"""Study data: seeded tasks and the loader for user tensors."""

from __future__ import annotations

import pytest
import torch

from deepres.study.shared.data import load_task, make_task, paper_task, teacher_task


def test_paper_task_is_seeded_gaussian():
    a, b = paper_task(3), paper_task(3)
    assert a.x.shape == (10, 5) and a.y.shape == (10, 5) and a.x.dtype == torch.float32
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, paper_task(4).x)
    big = paper_task(0, samples=4000, dtype=torch.float64)
    assert abs(big.x.std().item() - 1) < 0.05 and abs(big.y.mean().item()) < 0.05


def test_teacher_task_is_a_function_of_x():
    task = teacher_task(1, samples=20, out_features=3, hidden=8, dtype=torch.float64)
    assert task.y.shape == (20, 3) and task.name == "teacher"
    assert make_task("teacher", 1, samples=20, out_features=3, hidden=8, dtype=torch.float64).y.equal(task.y)


def test_load_task_from_tensors_and_files(tmp_path):
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    assert load_task((x, y)).out_features == 2
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    assert torch.equal(load_task(tmp_path / "d.pt", dtype=torch.float32).x, x)
    torch.save({"x": x}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="keys"):
        load_task(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="same N"):
        load_task((x, y[:2]))
    with pytest.raises(ValueError, match="task"):
        make_task("mnist")
    with pytest.raises(TypeError, match="seed"):
        paper_task("0")
