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
