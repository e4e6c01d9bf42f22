"""The built wheel: what `pip install oscar-codec` gets must hold every file of the package,
the embedded model's weights and the sample image included (an editable install, which the
other tests use, reads them from src/ and cannot tell)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_every_package_file(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    # A copy, so that the build's own folders (build/, *.egg-info) stay out of the checkout.
    shutil.copytree(
        ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(project)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("oscar_codec-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
        entry_points = next(n for n in shipped if n.endswith(".dist-info/entry_points.txt"))
        assert "oscar = oscar.cli:main" in archive.read(entry_points).decode()
    package = project / "src"
    files = [p for p in (package / "oscar").rglob("*") if p.is_file()]
    wanted = {p.relative_to(package).as_posix() for p in files}
    assert wanted - shipped == set()
    assert {"oscar/weights/small/oscar.json", "oscar/assets/sample.png"} <= shipped
