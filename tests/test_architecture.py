"""The import contract (``[tool.importlinter]`` in ``pyproject.toml``) holds, and it catches a
wrong import: a copy of the tree with one deliberate violation fails it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["importlinter"]["root_packages"]
    return packages


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _copy_tree(destination: Path) -> Path:
    for package in _packages():
        shutil.copytree(
            ROOT / package,
            destination / package,
            ignore=shutil.ignore_patterns("__pycache__", "node_modules", "dist", "*.pt", "*.onnx"),
        )
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def test_the_code_keeps_the_import_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "message"),
    [
        # the core imports no product package
        ("core/_bad.py", "import serving.worklist\n", "core is not allowed to import serving"),
        # parts never import each other
        (
            "training/_bad.py",
            "import dicom_gateway.senders\n",
            "training is not allowed to import dicom_gateway",
        ),
        # nothing below the shell imports it
        ("serving/_bad.py", "import radcloud.cli\n", "serving is not allowed to import radcloud"),
        # Orthanc only through the archive seam
        (
            "serving/_bad.py",
            "import pyorthanc\n",
            "Product code reaches Orthanc only through the archive seam",
        ),
        # domain code speaks no protocol
        (
            "models/_bad.py",
            "import fastapi\n",
            "models.",
        ),
    ],
)
def test_a_wrong_import_breaks_the_contract(
    tmp_path: Path, module: str, bad_import: str, message: str
) -> None:
    tree = _copy_tree(tmp_path / "tree")
    assert _lint_imports(tree).returncode == 0  # the copy keeps it, as the code does

    (tree / module).write_text(bad_import)
    result = _lint_imports(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert message in result.stdout
