"""Tests of the benchmark harness (deepres.benchmark): no timing asserts.

Every provider must compute the same outputs and gradients as the plain
reference on the same inputs; result files must carry the documented fields;
providers that cannot run must be skipped with a reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import math

import pytest
import torch

from deepres.benchmark import cli
from deepres.benchmark.case import Case, Inputs, make_inputs
from deepres.benchmark.config import BenchConfig
from deepres.benchmark.growth import fit_growth
from deepres.benchmark.harness import run_benchmark
from deepres.benchmark.measure import RESULT_FIELDS, measure
from deepres.benchmark.memory import SavedTensorCounter
from deepres.benchmark.providers import meanode_providers, stack_providers
from deepres.benchmark.report import CSV_COLUMNS, format_table, write_csv, write_json, write_plot
from deepres.benchmark.timing import TimingOptions, quantile
from deepres.engines.reference import reference_residual_stack

FAST = TimingOptions(warmup=1, min_repeats=1, max_repeats=1, min_time=0.0, max_time=1.0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def reference_outputs(case: Case, inputs: Inputs) -> dict[str, torch.Tensor]:
    """Output and gradients of the plain reference, computed independently of any Runner."""
    u = inputs.u.detach().clone().requires_grad_(True)
    v = inputs.v.detach().clone().requires_grad_(True)
    out = reference_residual_stack(inputs.h0, u, v, inputs.multiplier, inputs.pre_scale, case.activation)
    grad_u, grad_v = torch.autograd.grad((out * inputs.probe).sum(), (u, v))
    return {"out": out.detach(), "u": grad_u, "v": grad_v}


def run_provider(provider, case: Case, inputs: Inputs) -> dict[str, torch.Tensor]:
    runner = provider.build(case, inputs)
    return runner.outputs(runner.step())


CHEAP_STACK = ["eager", "reference", "deepres-torch", "deepres-torch-sqrt", "deepres-torch-k3",
               "eager-checkpoint", "deepres-torch-loop"]


@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_stack_providers_agree_with_reference(replicas: int, activation: str) -> None:
    # L = 7 is not a multiple of the checkpoint segments (⌈√7⌉ = 3, k = 3).
    case = Case(depth=7, batch=3, dim=4, hidden=5, replicas=replicas, activation=activation,
                dtype="float64", seed=11)
    inputs = make_inputs(case)
    expected = reference_outputs(case, inputs)
    ran = 0
    for provider in stack_providers([None, "sqrt", 3]):
        if provider.name not in CHEAP_STACK or provider.unavailable_reason(case) is not None:
            continue
        got = run_provider(provider, case, inputs)
        assert set(got) == {"out", "u", "v"}, provider.name
        for name, value in expected.items():
            assert got[name].shape == value.shape, (provider.name, name)
            assert rel(got[name], value) <= 1e-12, (provider.name, name, rel(got[name], value))
        ran += 1
    assert ran == (7 if replicas > 1 else 6)


def test_forward_mode_runs_without_graph() -> None:
    case = Case(depth=5, batch=2, dim=3, hidden=4, mode="forward", dtype="float64", seed=3)
    inputs = make_inputs(case)
    expected = reference_outputs(case, inputs)["out"]
    for provider in stack_providers([None, "sqrt"]):
        if provider.name not in CHEAP_STACK or provider.unavailable_reason(case) is not None:
            continue
        runner = provider.build(case, inputs)
        out = runner.step()
        assert not out.requires_grad
        assert set(runner.outputs(out)) == {"out"}
        assert rel(out, expected) <= 1e-12, provider.name


@pytest.mark.slow
def test_compile_provider_agrees_with_reference() -> None:
    case = Case(depth=3, batch=2, dim=4, hidden=4, dtype="float64", seed=5)
    inputs = make_inputs(case)
    expected = reference_outputs(case, inputs)
    provider = next(p for p in stack_providers() if p.name == "compile")
    try:
        got = run_provider(provider, case, inputs)
    except Exception as error:  # no C++ compiler: the harness reports it as skipped
        pytest.skip(f"torch.compile cannot run here: {error}")
    for name, value in expected.items():
        assert rel(got[name], value) <= 1e-12, name


def test_inputs_are_identical_for_every_draw() -> None:
    case = Case(depth=4, batch=3, dim=2, hidden=3, replicas=2, seed=7)
    first, second = make_inputs(case), make_inputs(case)
    for name in ("h0", "u", "v", "probe"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert first.u.shape == (2, 4, 3, 2) and first.h0.shape == (2, 3, 2)
    assert math.isclose(first.multiplier, 1.0 / (4 * 3)) and math.isclose(first.pre_scale, 0.5)


def test_saved_bytes_accounting_is_exact() -> None:
    # The engine keeps L·B·D numbers; plain autograd with tanh keeps h and σ(z): L·B·(D + M).
    case = Case(depth=6, batch=5, dim=3, hidden=7, dtype="float64", seed=1)
    inputs = make_inputs(case)
    item = 8
    expected = {
        "deepres-torch": case.depth * case.batch * case.dim * item,
        "deepres-torch-sqrt": math.ceil(case.depth / 3) * case.batch * case.dim * item,
        "eager": case.depth * case.batch * (case.dim + case.hidden) * item,
        "reference": case.depth * case.batch * (case.dim + case.hidden) * item,
        "eager-checkpoint": math.ceil(case.depth / 3) * case.batch * case.dim * item,
    }
    for provider in stack_providers([None, "sqrt"]):
        if provider.name not in expected:
            continue
        runner = provider.build(case, inputs)
        counter = SavedTensorCounter(runner.params)
        with counter.track():
            out = runner.forward()
        assert out.requires_grad
        assert counter.nbytes == expected[provider.name], provider.name


def test_unavailable_providers_are_skipped_with_a_reason() -> None:
    case = Case(depth=4, batch=2, dim=2, hidden=2)  # CPU, one network
    by_name = {p.name: p for p in stack_providers() + meanode_providers()}
    triton = measure(by_name["deepres-triton"], case, FAST)
    assert triton["status"] == "skipped" and "CUDA" in triton["reason"]
    assert "interpreter" in triton["reason"]
    loop = measure(by_name["deepres-torch-loop"], case, FAST)
    assert loop["status"] == "skipped" and "replicas" in loop["reason"]
    graphs = measure(by_name["compile-reduce-overhead"], case, FAST)
    assert graphs["status"] == "skipped" and "CUDA" in graphs["reason"]
    wrong = measure(by_name["autograd-rk4"], case, FAST)
    assert wrong["status"] == "skipped" and "meanode" in wrong["reason"]
    for row in (triton, loop, graphs, wrong):
        assert set(row) == set(RESULT_FIELDS) and row["time"] is None


def test_build_failure_is_reported_as_skipped() -> None:
    from deepres.benchmark.runner import Provider

    def broken(case, inputs):
        raise RuntimeError("no compiler found")

    row = measure(Provider("broken", "stack", "always fails", broken), Case(depth=2, batch=1, dim=1, hidden=1),
                  FAST)
    assert row["status"] == "skipped" and "no compiler found" in row["reason"]


def _check_report(report: dict[str, object], providers: list[str]) -> None:
    env = report["environment"]
    for key in ("device", "device_name", "cores", "torch_threads", "versions", "git_commit", "command",
                "time_utc", "load_average"):
        assert key in env, key
    assert {"torch", "triton", "numpy"} <= set(env["versions"])
    assert env["versions"]["torch"] == torch.__version__
    assert report["ceilings"]["copy_gbytes_per_s"] > 0 and report["ceilings"]["matmul_tflops"] > 0
    assert [row["provider"] for row in report["results"]][: len(providers)] == providers
    for row in report["results"]:
        assert set(row) == set(RESULT_FIELDS)
        if row["status"] == "ok":
            assert set(row["time"]) == {"median", "p10", "p90", "min", "mean", "repeats", "clock"}
            assert row["time"]["p10"] <= row["time"]["median"] <= row["time"]["p90"]
            assert row["peak_bytes"] is not None
            if row["saved_bytes"] is None:  # compiled by an eager backend: saved out of the hooks' sight
                assert row["provider"] == "deepres-compiled" and "not measurable" in row["reason"]
            else:
                assert row["saved_bytes"] > 0
            assert row["rel_err"] <= 1e-5 and row["rel_err_vs"] == providers[0]
            assert row["speedup_vs_baseline"] > 0
        else:
            assert row["reason"]


def test_report_files_have_the_documented_fields(tmp_path) -> None:
    providers = ["eager", "deepres-torch", "deepres-triton"]
    cases = [Case(depth=d, batch=4, dim=4, hidden=4) for d in (4, 8)]
    report = run_benchmark(BenchConfig(cases, providers=providers, isolation="inprocess", timing=FAST),
                           argv=["deepres", "bench", "--test"], quick=True, log=lambda text: None)
    _check_report(report, ["eager", "eager"])
    assert report["environment"]["command"] == "deepres bench --test"
    assert {fit["provider"] for fit in report["growth"]} == {"eager", "deepres-torch"}
    for fit in report["growth"]:
        assert math.isclose(fit["saved_bytes_exponent"], 1.0, rel_tol=1e-9)  # saved bytes ∝ L exactly
    write_json(report, tmp_path / "r.json")
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert set(loaded) == {"environment", "ceilings", "config", "baseline", "results", "growth"}
    write_csv(report, tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as source:
        rows = list(csv.DictReader(source))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 6
    table = format_table(report)
    assert "deepres-torch" in table and "not measured" in table and "growth exponents" in table
    pytest.importorskip("matplotlib")
    write_plot(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_runs_providers_in_their_own_processes(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    path = tmp_path / "out.json"
    args = parser.parse_args(["--depths", "4", "--batch", "2", "--dims", "2", "--hidden", "2",
                              "--providers", "eager,deepres-torch,deepres-triton", "--min-repeats", "1",
                              "--repeats", "1", "--min-time", "0", "--isolation", "subprocess",
                              "--json", str(path)])
    assert cli.main(args) == 0
    report = json.loads(path.read_text())
    _check_report(report, ["eager", "deepres-torch", "deepres-triton"])
    rows = {row["provider"]: row for row in report["results"]}
    assert rows["eager"]["peak_method"].startswith("rss_hwm")
    assert rows["deepres-triton"]["status"] == "skipped"
    assert "deepres-torch" in capsys.readouterr().out


def test_workers_get_the_provider_options_and_cold_compile_caches(tmp_path, monkeypatch) -> None:
    from deepres.benchmark import isolation, worker

    config = BenchConfig([Case(depth=2, batch=1, dim=1, hidden=1)], checkpoint_policies=[3],
                         compile_backend="eager")
    seen = []
    monkeypatch.setattr(isolation, "run_worker", lambda kind, spec, env, timeout: seen.append((spec, env)) or ([], None))
    by_name = {p.name: p for p in config.all_providers()}
    for name in ("deepres-compiled", "eager"):
        rows = isolation.run_isolated(by_name[name], config, tmp_path)
        assert rows[0]["status"] == "error"  # the stand-in worker wrote nothing
    (compiled_spec, compiled_env), (_, eager_env) = seen
    assert compiled_env["TORCHINDUCTOR_CACHE_DIR"].startswith(str(tmp_path))
    assert compiled_env["TRITON_CACHE_DIR"].startswith(str(tmp_path))
    assert "TORCHINDUCTOR_CACHE_DIR" not in eager_env and eager_env["MALLOC_MMAP_THRESHOLD_"]
    # What the worker rebuilds from the spec is what the harness meant.
    rebuilt = worker._providers(json.loads(json.dumps(compiled_spec)), "stack")
    assert "eager" in rebuilt["deepres-compiled"].description and "deepres-torch-k3" in rebuilt


def _bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepres bench")
    cli.configure_parser(parser)
    return parser


@pytest.mark.parametrize("option, value", [
    ("--depths", "0"), ("--depths", "x"), ("--batch", "-1"), ("--dims", ""), ("--hidden", "1.5"),
    ("--replicas", "0"), ("--activation", "sine"), ("--checkpoint-every", "often"), ("--alpha", "0"),
    ("--alpha", "nan"), ("--seed", "-1"), ("--warmup", "-1"), ("--min-repeats", "0"), ("--repeats", "0"),
    ("--min-time", "-1"), ("--max-time", "0"), ("--threads", "0"), ("--provider-timeout", "0"),
    ("--device", "tpu"), ("--dtype", "float16"), ("--workload", "cnn"), ("--mode", "both"),
    ("--isolation", "thread"), ("--compile-backend", "tvm"), ("--preset", "nonsense"),
    ("--checkpoint-every", "none"),  # the old spelling of every-layer, which read as "no checkpointing"
])
def test_cli_rejects_each_bad_option_in_one_line(option, value, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _bench_parser().parse_args([option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deepres bench: error: argument "), err
    assert option in err and repr(value) in err, err


def test_cli_checkpoint_policies_spell_every_layer() -> None:
    args = _bench_parser().parse_args(["--checkpoint-every", "every-layer,sqrt,1,4"])
    assert args.checkpoint_every == [None, "sqrt", 1, 4]  # every-layer is checkpoint_every=None, k = 1


def test_cli_refuses_unknown_options_in_one_line(capsys) -> None:
    from deepres.cli import main as deepres_main

    with pytest.raises(SystemExit) as exit_info:
        deepres_main(["bench", "--depths", "2", "--deep", "3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "deepres bench: error: unrecognized arguments: --deep 3\n"


@pytest.mark.parametrize("argv, option, value", [
    (["--providers", "nonsense", "--depths", "2"], "--providers", "nonsense"),
    (["--providers", "deepres-torch-k3"], "--providers", "deepres-torch-k3"),
    (["--workload", "meanode", "--providers", "eager"], "--providers", "eager"),
    (["--min-repeats", "5", "--repeats", "2"], "--repeats", "2"),
    (["--preset", "replicas", "--workload", "meanode"], "--replicas (from --preset replicas)", "[32]"),
    (["--workload", "meanode", "--replicas", "2"], "--replicas", "[2]"),
    (["--json", "/nonexistent-folder/r.json"], "--json", "/nonexistent-folder/r.json"),
    (["--csv", "."], "--csv", "."),
])
def test_cli_checks_options_together_before_any_work(argv, option, value, capsys, monkeypatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("a bad option must stop the command before any measurement")

    monkeypatch.setattr(cli, "run_benchmark", no_work)
    assert cli.main(_bench_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"deepres bench: error: argument {option}: "), err
    assert value in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given without CUDA")
@pytest.mark.parametrize("argv", [["--device", "cuda"], ["--preset", "gpu"]])
def test_cli_refuses_cuda_without_cuda(argv, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "run_benchmark", lambda *a, **k: pytest.fail("ran without CUDA"))
    assert cli.main(_bench_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --device" in err and "'cuda'" in err, err


def test_cli_refuses_a_plot_without_matplotlib(tmp_path, capsys, monkeypatch) -> None:
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real(name))
    monkeypatch.setattr(cli, "run_benchmark", lambda *a, **k: pytest.fail("ran without matplotlib"))
    assert cli.main(_bench_parser().parse_args(["--plot", str(tmp_path / "p.png")])) == 2
    assert "argument --plot" in capsys.readouterr().err


def test_presets_and_quick_resolve_to_valid_configs() -> None:
    assert not [name for name in cli.PRESETS if any(ch.isdigit() for ch in name)]  # named for what they measure
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    for name in cli.PRESETS:
        config = cli.build_config(cli.resolve(parser.parse_args(["--preset", name])))
        config.selected_providers()
    quick = cli.resolve(parser.parse_args(["--quick", "--depths", "32"]))
    assert quick["depths"] == [32] and quick["max_time"] == 2.0
    engine = cli.resolve(parser.parse_args(["--preset", "engine-vs-reference"]))
    assert (engine["depths"], engine["batch"], engine["dims"], engine["hidden"]) == ([2048], [256], [32], [128])


@pytest.mark.parametrize("bad", [dict(depth=0), dict(workload="cnn"), dict(dtype="float16"),
                                 dict(workload="meanode", replicas=2), dict(activation="sine")])
def test_case_rejects_bad_values(bad) -> None:
    with pytest.raises(ValueError):
        Case(**bad)


def test_quantile_and_growth_fit() -> None:
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert math.isclose(quantile([0.0, 10.0], 0.1), 1.0)
    assert math.isclose(fit_growth([10, 20, 40], [3.0, 12.0, 48.0]), 2.0)
    assert fit_growth([10, 10], [1.0, 2.0]) is None
    with pytest.raises(ValueError):
        TimingOptions(min_repeats=0)


# ---------------------------------------------------------------------------------- meanode


def tied_inputs(case: Case) -> Inputs:
    """Inputs whose parameters are the same at every node: an autonomous ODE."""
    inputs = make_inputs(case)
    inputs.u = inputs.u[:1].expand_as(inputs.u).contiguous()
    inputs.v = inputs.v[:1].expand_as(inputs.v).contiguous()
    return inputs


def test_meanode_providers_agree() -> None:
    # Classic rk4 (autograd loop) and torchdiffeq's 3/8-rule rk4 solve the same autonomous
    # ODE to fourth order; odeint and odeint_adjoint give the same output and gradients
    # up to the adjoint's discretization.
    case = Case(workload="meanode", depth=8, batch=3, dim=2, hidden=6, dtype="float64", seed=2)
    inputs = tied_inputs(case)
    by_name = {p.name: p for p in meanode_providers()}
    base = run_provider(by_name["autograd-rk4"], case, inputs)
    assert base["u"].shape == (17, 6, 2)
    if by_name["torchdiffeq-odeint"].unavailable_reason(case) is None:
        plain = run_provider(by_name["torchdiffeq-odeint"], case, inputs)
        adjoint = run_provider(by_name["torchdiffeq-odeint-adjoint"], case, inputs)
        assert rel(plain["out"], base["out"]) <= 1e-8
        # Summed over the nodes each stage uses, the gradients are those of the same ODE.
        assert rel(plain["u"].sum(0), base["u"].sum(0)) <= 1e-6
        assert rel(adjoint["out"], plain["out"]) <= 1e-12
        assert rel(adjoint["v"].sum(0), plain["v"].sum(0)) <= 1e-6
    for name in ("deepres-meanode-adjoint", "deepres-meanode-adjoint-backsolve", "deepres-meanode-discrete"):
        reason = by_name[name].unavailable_reason(case)
        if reason is not None:
            assert "MeanODE" in reason
            continue
        # The discrete route is the exact gradient of the same classic-rk4 solve, whatever the
        # weights; the adjoint route is the ODE's gradient, equal to it up to the solver's order
        # when the field is smooth in depth (tied nodes; measured 3.5e-6 at N = 8).
        for inputs, smooth in ((make_inputs(case), False), (tied_inputs(case), True)):
            exact = name == "deepres-meanode-discrete"
            if not (exact or smooth):
                continue
            tol = 1e-12 if exact else 1e-4
            got = run_provider(by_name[name], case, inputs)
            want = run_provider(by_name["autograd-rk4"], case, inputs)
            assert rel(got["out"], want["out"]) <= 1e-12
            assert rel(got["u"], want["u"]) <= tol and rel(got["v"], want["v"]) <= tol


def test_meanode_autograd_matches_explicit_rk4() -> None:
    # One rk4 step by hand on the node grid (nodes 0, 1, 1, 2).
    case = Case(workload="meanode", depth=1, batch=2, dim=3, hidden=4, dtype="float64", seed=9)
    inputs = make_inputs(case)
    c, a = inputs.multiplier, inputs.pre_scale

    def field(h, j):
        return c * torch.tanh(a * h @ inputs.u[j].T) @ inputs.v[j]

    h = inputs.h0
    k1 = field(h, 0)
    k2 = field(h + 0.5 * k1, 1)
    k3 = field(h + 0.5 * k2, 1)
    k4 = field(h + k3, 2)
    expected = h + (k1 + 2 * k2 + 2 * k3 + k4) / 6
    provider = next(p for p in meanode_providers() if p.name == "autograd-rk4")
    assert rel(run_provider(provider, case, inputs)["out"], expected) <= 1e-14


def test_timing_options_bound_the_repeats() -> None:
    from deepres.benchmark.timing import time_step

    calls: list[int] = []
    result = time_step(lambda: calls.append(1), torch.device("cpu"),
                       TimingOptions(warmup=2, min_repeats=3, max_repeats=5, min_time=0.0))
    assert result.repeats == 3 and len(calls) == 5 and result.clock == "perf_counter"
    calls.clear()
    result = time_step(lambda: calls.append(1), torch.device("cpu"),
                       TimingOptions(warmup=0, min_repeats=1, max_repeats=4, min_time=100.0))
    assert result.repeats == 4 and len(calls) == 4


def test_interleaved_timing_runs_every_step_each_round() -> None:
    from deepres.benchmark.timing import time_interleaved

    calls: dict[str, int] = {"a": 0, "b": 0}

    def step(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    results = time_interleaved({"a": step("a"), "b": step("b")}, torch.device("cpu"),
                               TimingOptions(warmup=1, min_repeats=4, max_repeats=6, min_time=0.0))
    assert calls == {"a": 5, "b": 5}
    assert results["a"].repeats == results["b"].repeats == 4


# ---------------------------------------------------------------------- baselines and compile


def test_inputs_follow_the_parameterization() -> None:
    from deepres import Parameterization

    stack = Case(depth=6, batch=2, dim=4, hidden=3, alpha=2.5)
    scheme = Parameterization("mlu", depth=6, hidden=3, dim=4, alpha=2.5)
    inputs = make_inputs(stack)
    assert (inputs.multiplier, inputs.pre_scale) == (scheme.multiplier, scheme.pre_scale)
    # The draws have the scheme's spread: (u / std) is the same standard normal draw for any D.
    wide = make_inputs(Case(depth=6, batch=2, dim=4, hidden=3, alpha=2.5, dtype="float64"))
    assert math.isclose(float(wide.u.std()), scheme.init_std_u, rel_tol=0.3)
    ode = make_inputs(Case(workload="meanode", depth=5, batch=2, dim=4, hidden=3, alpha=2.5))
    field = Parameterization("mlu", depth=5, hidden=3, dim=4, alpha=2.5)
    assert math.isclose(ode.multiplier, field.multiplier * 5, rel_tol=1e-15)


def test_eager_baseline_is_plain_pytorch() -> None:
    # B·M = 4096 elements: where deepres.activations computes tanh through a sigmoid on the CPU.
    # The eager baseline must be exactly what a user writes with torch.tanh.
    import torch.nn.functional as F

    case = Case(depth=3, batch=64, dim=8, hidden=64, mode="forward", seed=4)
    inputs = make_inputs(case)
    eager = next(p for p in stack_providers() if p.name == "eager")
    got = eager.build(case, inputs).step()
    h = inputs.h0
    for u_l, v_l in zip(inputs.u, inputs.v, strict=True):
        h = h + inputs.multiplier * F.linear(torch.tanh(inputs.pre_scale * F.linear(h, u_l)), v_l.t().contiguous())
    assert torch.equal(got, h)


@pytest.mark.parametrize("name", ["compile", "compile-reduce-overhead"])
def test_compiled_block_weights_are_parameters(name) -> None:
    # CUDA-graph trees treat nn.Parameters as static inputs: a replay reads them in place.
    case = Case(depth=3, batch=2, dim=4, hidden=4, replicas=2)
    provider = next(p for p in stack_providers() if p.name == name)
    runner = provider.build(case, make_inputs(case))  # torch.compile is lazy: nothing compiles here
    assert len(runner.params) == 2 * 3 * 2
    assert all(isinstance(p, torch.nn.Parameter) for p in runner.params)


def test_deepres_compiled_provider_matches_the_reference_and_times_its_compile() -> None:
    from deepres.benchmark.measure import set_time

    case = Case(depth=3, batch=2, dim=4, hidden=4, dtype="float64", seed=6)
    inputs = make_inputs(case)
    provider = next(p for p in stack_providers(compile_backend="eager") if p.name == "deepres-compiled")
    assert provider.compiles and "eager" in provider.description
    expected = reference_outputs(case, inputs)
    got = run_provider(provider, case, inputs)
    for name, value in expected.items():
        assert rel(got[name], value) <= 1e-12, name
    row = measure(provider, case, FAST)
    assert row["status"] == "ok", row["reason"]
    assert row["first_step_s"] > 0 and row["compile_s"] >= 0
    assert math.isclose(row["compile_s"], max(0.0, row["first_step_s"] - row["time"]["median"]))
    # Only compiling providers get a compile time.
    plain = measure(next(p for p in stack_providers() if p.name == "eager"), case, FAST)
    assert plain["first_step_s"] > 0 and plain["compile_s"] is None
    set_time(plain, case, plain["time"], compiles=False)
    assert plain["compile_s"] is None


def test_report_shows_the_compile_time_column() -> None:
    case = Case(depth=2, batch=2, dim=2, hidden=2)
    report = run_benchmark(BenchConfig([case], providers=["eager", "deepres-compiled"], isolation="inprocess",
                                       timing=FAST, compile_backend="eager"), log=lambda text: None)
    rows = {row["provider"]: row for row in report["results"]}
    assert rows["deepres-compiled"]["status"] == "ok", rows["deepres-compiled"]["reason"]
    assert rows["deepres-compiled"]["compile_s"] is not None and rows["eager"]["compile_s"] is None
    assert report["config"]["compile_backend"] == "eager"
    header = format_table(report).splitlines()[3]
    assert "compile s" in header


def test_stored_result_files_stay_readable(tmp_path) -> None:
    from pathlib import Path

    stored = sorted((Path(__file__).resolve().parent.parent / "bench" / "results").glob("*.json"))
    reports = [json.loads(path.read_text()) for path in stored]
    # deepres bench reports, not gpu_check's, compile_check's or compile_time's
    reports = [r for r in reports if {"results", "baseline", "config"} <= set(r)]
    assert reports
    for report in reports:
        assert format_table(report)
        write_csv(report, tmp_path / "r.csv")
        preset = report["config"].get("preset")
        assert preset is None or preset in cli.PRESETS
