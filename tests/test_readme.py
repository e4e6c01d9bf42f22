"""The README's commands and example stay true."""

from __future__ import annotations

import os
import re

from helpers import ROOT


def _block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(marker, 1)[1]
    return re.search(r"```(?:bash|python)?\n(.*?)```", after, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """Runs with the embedded model, as a user would, from any folder (the sample image comes
    from the package, not from a checkout)."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "src/oscar" not in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert os.path.exists(tmp_path / "decoded.png")


def test_readme_is_an_entry_point():
    """Short enough to read in five minutes; the commands pin torch through constraints.txt."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200 and len(text.split()) <= 1500
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert "-c constraints.txt" in _block_after(marker)
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    for line in text.splitlines():  # every `pip install` of the README takes the constraints
        if "pip install" in line and "torch" not in line:
            assert "-c constraints.txt" in line, line


def test_tiny_recipe_data_comes_from_the_documented_script(tmp_path):
    """configs/train_tiny.yaml reads what scripts/make_tiny_data.py writes by default."""
    import subprocess
    import sys

    import yaml

    recipe = yaml.safe_load((ROOT / "configs" / "train_tiny.yaml").read_text())
    script = ROOT / "scripts" / "make_tiny_data.py"
    assert f"python scripts/{script.name}" in (ROOT / "README.md").read_text()
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True, capture_output=True)
    for folder in recipe["data"]["train"] + recipe["data"]["validation"]:
        assert len(list((tmp_path / folder).glob("*.png"))) >= 2, folder


def test_ci_runs_the_readme_test_command():
    command = _block_after("<!-- test-command -->").strip()
    assert "pytest" in command
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # .ci/run extracts and runs exactly that line
