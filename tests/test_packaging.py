"""Packaging: every subpackage is listed for installation, kernels install under deepres."""

import configparser
import pathlib

import deepres.kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _listed_packages() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}


def test_every_subpackage_is_installed():
    found = {".".join(path.parent.relative_to(ROOT).parts)
             for path in (ROOT / "deepres").rglob("__init__.py")}
    found.add("deepres.kernels")  # mapped from the top-level kernels/ folder
    assert found == _listed_packages()


def test_kernels_are_a_subpackage_of_deepres():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options"]["package_dir"].split() == ["deepres.kernels", "=", "kernels"]
    assert deepres.kernels.__name__ == "deepres.kernels"
    assert pathlib.Path(deepres.kernels.__file__).parent == ROOT / "kernels"


def test_offline_tools_are_not_installed_and_not_imported_by_the_package():
    # tools/ (the GPU cost model) imports deepres; deepres never imports it and does not install it.
    assert not any(name.split(".")[0] == "tools" for name in _listed_packages())
    for name in ("compile_check", "cost_model", "sass"):
        assert not (ROOT / "kernels" / f"{name}.py").exists()
        assert (ROOT / "tools" / "kernel_cost" / f"{name}.py").exists()
    for path in [*(ROOT / "deepres").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        assert "import tools" not in text and "from tools" not in text, path


def test_choosing_an_engine_imports_no_kernel():
    # The engine choice reads MAX_FUSED_DIM on every call: it must not import the kernels (nor, by
    # deepres, triton), which only the launcher does.
    import subprocess
    import sys

    code = ("import sys, torch, deepres\n"
            "from deepres.engines.triton.support import fallback_reason\n"
            "assert fallback_reason(torch.zeros(1, 2, 300), torch.zeros(1, 3, 4, 300)).startswith('D = 300')\n"
            "deepres.residual_stack(torch.ones(2, 3), torch.ones(4, 2, 3), torch.ones(4, 2, 3), multiplier=0.1)\n"
            "loaded = [m for m in sys.modules if m.startswith(('deepres.kernels.', 'deepres.engines.triton.'))]\n"
            "assert sorted(loaded) == ['deepres.engines.triton.op', 'deepres.engines.triton.support', "
            "'deepres.kernels.plan'], loaded\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def _floors() -> dict[str, str]:
    """Every direct dependency (runtime and extras) → its floor, from pyproject.toml."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    floors: dict[str, str] = {}
    for text in requirements:
        requirement = Requirement(text)
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(lower) == 1 and len(requirement.specifier) == 1, f"{text}: one floor (>=) and nothing else"
        assert floors.setdefault(requirement.name, lower[0]) == lower[0], f"{requirement.name}: two floors"
    return floors


def _pins() -> dict[str, str]:
    """Package → pinned version, from the constraints file CI installs with."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name] = spec.version
    return pins


def test_dependency_floors_are_the_versions_ci_installs():
    # CI installs every dependency pinned to its floor, so each floor is a tested version.
    assert _pins() == _floors()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" -c .ci/constraints.txt' in ci
    assert f"pip install torch=={_floors()['torch']} " in ci


def test_installed_versions_meet_the_floors():
    import sys
    from importlib.metadata import version

    import tomllib
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for name, floor in _floors().items():
        installed = Version(version(name))
        assert Version(installed.base_version) >= Version(floor), f"{name} {installed} is below its floor {floor}"
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(python).contains(".".join(map(str, sys.version_info[:3])))
