"""What a user sees: which criterion each check uses, the plots, the demo, --help and the README."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from deepres import demo
from deepres.cli import build_parser
from deepres.study.convergence import plots
from deepres.study.convergence.presets import StudyConfig
from deepres.study.convergence.report import summary
from deepres.study.convergence.run import run_study
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A tiny study with two widths (so that every plot has fits), without plots."""
    config = StudyConfig(**(TINY | {"widths": [1, 2], "alpha_axis": [1.0, 2.0], "alpha_fit": [0.5, 4.0]}))
    return run_study(config, tmp_path_factory.mktemp("study"), progress=False, plots=False, estimate=False)


# ---------------------------------------------------------------- 13. which criterion counts

def test_every_check_names_its_criterion_and_the_slope_checks_report_both(report):
    assert report["checks"]
    for check in report["checks"]:
        assert check["criterion"]
        if "ci" in check:
            assert check["criterion"].startswith("band") and "theory_in_ci" in check
    text = summary(report)
    slope_lines = [line for line in text.splitlines() if line.strip().startswith("[") and "slope" in line]
    assert slope_lines and all(re.search(r"theory [+-][\d.]+ (in|outside) the CI", line) for line in slope_lines)
    assert "within the band" in text
    assert "## " in (ROOT / "docs" / "study.md").read_text() and "### Which criterion counts" in (
        ROOT / "docs" / "study.md").read_text()


# ---------------------------------------------------------------- 14. plots

def _figures(report, tmp_path, monkeypatch):
    """The figures plot_report makes, by file name (nothing written)."""
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi: figures.__setitem__(Path(path).name, fig))
    plots.plot_report(report, tmp_path)
    return figures


def _labels(fig):
    return [text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()]


def test_error_plots_show_the_fitted_slopes_and_keep_legends_off_the_data(report, tmp_path, monkeypatch):
    figures = _figures(report, tmp_path, monkeypatch)
    for name in ("error_vs_depth.png", "error_vs_width.png", "bias_vs_depth.png"):
        fig = figures[name]
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        if name != "bias_vs_depth.png":  # the tiny study's biases sink into the noise: no bias fit
            assert any(": slope" in label for label in _labels(fig)), name
        ax = fig.axes[0]
        canvas = FigureCanvasAgg(fig)  # the figure was closed: draw it on a canvas of its own
        canvas.draw()
        renderer = canvas.get_renderer()
        assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1, name
    depth = figures["error_vs_depth.png"].axes[0]
    assert not depth.get_ylabel().startswith("RMS error of f")
    assert "fluctuation and bias" in depth.get_title()


def test_points_left_out_of_a_fit_are_crossed_out(report, tmp_path, monkeypatch):
    marked = copy.deepcopy(report)
    fit = next(f for f in marked["fits"] if f["name"] == "fluctuation_vs_depth" and f["space"] == "output")
    fit["excluded"].append({"x": fit["x"][0], "value": fit["y"][0], "reason": "for the test"})
    labels = _labels(_figures(marked, tmp_path, monkeypatch)["error_vs_depth.png"])
    assert "left out of the fit" in labels
    assert "left out of the fit" not in _labels(_figures(report, tmp_path, monkeypatch)["error_vs_depth.png"]) \
        or any(f["excluded"] for f in report["fits"])


def test_a_reference_error_far_below_the_data_is_a_note_not_a_line(report, tmp_path, monkeypatch):
    tiny = copy.deepcopy(report)
    tiny["limits"][0]["output"]["reference_error"][-1] = 1e-30
    ax = _figures(tiny, tmp_path, monkeypatch)["error_vs_width.png"].axes[0]
    assert not any("reference" in label for label in _labels(ax.figure))
    assert any("below this axis" in text.get_text() for text in ax.texts)
    low, _ = ax.get_ylim()
    assert low > 1e-20  # the data are not squeezed against a line at 1e-30


def test_the_lazy_plot_title_matches_its_file_and_names_each_quantity(report, tmp_path, monkeypatch):
    ax = _figures(report, tmp_path, monkeypatch)["alpha_sweep.png"].axes[0]
    assert ax.get_title().startswith("α sweep")
    assert ax.get_ylabel() != "relative size"
    labels = _labels(ax.figure)
    assert any("‖θ − θ₀‖ / ‖θ₀‖" in label for label in labels)
    assert sum("/ output movement" in label for label in labels) == 2


# ---------------------------------------------------------------- 15. commands and README

def test_demo_names_the_engines_it_skips_and_warms_each_up(capsys, monkeypatch):
    calls = []
    step = demo._saved_bytes_and_grads
    monkeypatch.setattr(demo, "_saved_bytes_and_grads", lambda net, x, y: calls.append(1) or step(net, x, y))
    monkeypatch.setattr(demo, "_triton_skip_reason", lambda device: "not here, for the test")
    results = demo.run_demo(depth=4, dim=2, hidden=2, batch=2)
    timed = [label for label, row in results.items() if "seconds" in row]
    assert len(calls) == 2 * len(timed)  # one warm-up step, then the timed one
    assert results["triton"] == {"skipped": "not here, for the test"}
    assert "triton" in capsys.readouterr().out.split("skipped:")[0].splitlines()[-1]


def test_study_help_prints_one_default_per_option_and_what_each_preset_contains():
    study = next(action for action in build_parser()._subparsers._group_actions[0].choices.items()
                 if action[0] == "study")[1]
    text = " ".join(study.format_help().split("options:", 1)[1].split())  # past the usage lines
    for flag in ("--solver SOLVER", "--particle-init PARTICLE_INIT"):
        block = text.split(flag, 1)[1].split(" --", 1)[0]
        assert block.count("default") == 1, block
    assert "quick: L 4,8,16,32,64,128" in text and "large: L 16,64,256,1024" in text


def test_readme_lists_every_extra_and_says_where_x_and_y_come_from():
    readme = (ROOT / "README.md").read_text()
    extras = re.findall(r"^(\w+) = \[", (ROOT / "pyproject.toml").read_text().split(
        "[project.optional-dependencies]")[1].split("\n[")[0], flags=re.M)
    assert "ray" in extras
    for extra in extras:
        assert f"`{extra}`" in readme, extra
    assert "about 95 s" not in readme
    limit = readme.index("MeanODENet.coupled_to(resnet")
    assert "`x`, `y`" in readme[limit - 300:limit]
    assert ".lock" in readme
