"""The layers of DESIGN.md, enforced: import-linter's contracts (pyproject.toml,
[tool.importlinter]) run over the installed shape of the package, and a planted upward
import makes them fail.

import-linter walks a package's folder, and ours is assembled from several top-level
folders (pyproject's package-dir), so each run copies them into one `llmtraffic/` tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def assemble(dest: Path) -> Path:
    """The package as pip installs it, under dest/llmtraffic."""
    mapping = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        target = dest.joinpath(*package.split("."))
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder)
            if rel.parts[0] in mapping.values() or any(p.startswith(".") for p in rel.parts):
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(PYPROJECT)!r}, no_cache=True, "
            "no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tree), "PATH": ""}, timeout=300)


def test_contracts_hold(tmp_path):
    result = lint(assemble(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken" in result.stdout


def test_a_planted_upward_import_breaks_the_layers(tmp_path):
    tree = assemble(tmp_path)
    store = tree / "llmtraffic" / "contracts" / "store.py"
    store.write_text(store.read_text() + "\nfrom llmtraffic.balancer import router  # planted\n")
    policy = tree / "llmtraffic" / "balancer" / "policy" / "queue.py"
    policy.write_text(policy.read_text() + "\nimport llmtraffic.balancer.proxy  # planted\n")
    result = lint(tree)
    assert result.returncode == 1
    assert "llmtraffic.contracts.store -> llmtraffic.balancer.router" in result.stdout
    assert "llmtraffic.balancer.policy.queue -> llmtraffic.balancer.proxy" in result.stdout
    assert "Contracts: 1 kept, 2 broken" in result.stdout


def test_every_balancer_module_is_above_the_policies():
    """The pure-policies contract names each balancer module; a new one must be added."""
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    forbidden = set(next(c for c in contracts if c["id"] == "pure-policies")["forbidden_modules"])
    modules = {f"llmtraffic.balancer.{p.stem}" for p in (ROOT / "balancer").glob("*.py")
               if p.stem != "__init__"}
    assert modules <= forbidden, modules - forbidden
