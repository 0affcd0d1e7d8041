"""pyproject.toml and environment.yml declare the same dependencies."""

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = project["dependencies"] + project["optional-dependencies"]["test"]
    return {Requirement(e).name.lower(): str(Requirement(e).specifier) for e in entries}


def conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {Requirement(e).name.lower(): str(Requirement(e).specifier) for e in pip}


def test_pyproject_and_environment_agree():
    assert pyproject_requirements() == conda_requirements()


def test_torch_range_tops_out_at_2_13():
    spec = Requirement(
        next(
            e
            for e in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if e.startswith("torch")
        )
    ).specifier
    assert Version("2.13.0") in spec and Version("2.13.9") in spec
    assert Version("2.14.0") not in spec


def test_required_libraries_are_declared():
    names = set(pyproject_requirements())
    for needed in (
        "jupyterlab",
        "ipywidgets",
        "papermill",
        "transformers",
        "peft",
        "bitsandbytes",
        "matplotlib",
        "scikit-learn",
        "torch",
    ):
        assert needed in names


def test_environment_header_says_how_to_create_it():
    header = (ROOT / "environment.yml").read_text().split("name:")[0]
    assert re.search(r"conda env create -f environment.yml", header)
    assert "ipykernel install" in header


def test_every_package_the_code_imports_is_declared_with_an_upper_bound_where_it_breaks_apis():
    import ast
    import sys
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the export extra's llama.cpp bindings are imported, deferred, by the GGUF export alone
    entries = project["dependencies"] + project["optional-dependencies"]["export"]
    declared = {canonicalize_name(Requirement(e).name): Requirement(e) for e in entries}
    owners = packages_distributions()
    undeclared = {}
    for path in sorted((ROOT / "src" / "tunebook").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"tunebook"}:
                if not {canonicalize_name(d) for d in owners.get(top, [top])} & set(declared):
                    undeclared.setdefault(top, path.relative_to(ROOT).as_posix())
    assert undeclared == {}, f"imported but not in pyproject's dependencies: {undeclared}"
    # the libraries whose APIs tunebook calls deeply (adapters, quantization) are capped below their next major
    for name in ("peft", "bitsandbytes", "transformers", "torch", "mlflow", "llama-cpp-python"):
        assert any(s.operator in ("<", "<=") for s in declared[name].specifier), f"{name} has no upper bound"
