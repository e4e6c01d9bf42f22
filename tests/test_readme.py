"""The README's commands and example stay true."""

from __future__ import annotations

import os
import re
import shutil

from conftest import ROOT


def _block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(marker, 1)[1]
    return re.search(r"```(?:bash|python)?\n(.*?)```", after, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """Runs with the embedded model, as a user would."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "src/oscar/assets").mkdir(parents=True)
    shutil.copy(ROOT / "src/oscar/assets/sample.png", tmp_path / "src/oscar/assets/sample.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert os.path.exists(tmp_path / "decoded.png")


def test_ci_runs_the_readme_test_command():
    command = _block_after("<!-- test-command -->").strip()
    assert "pytest" in command
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # .ci/run extracts and runs exactly that line
