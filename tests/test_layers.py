"""The package's import layers (pyproject.toml [tool.importlinter]): each module imports only from
the layers below it, so data flows down once and no import is hidden in a function to dodge a
cycle (grimp, import-linter's graph, counts function-local imports too)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_layers_hold():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package whose models.py imports the trainers is refused."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "pear_exp", copy / "pear_exp",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    models = copy / "pear_exp" / "models.py"
    models.write_text(models.read_text() + "\nfrom pear_exp.train import sft  # noqa\n")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([exe], cwd=copy, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0
    assert "pear_exp.models is not allowed to import pear_exp.train" in result.stdout
