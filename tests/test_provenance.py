"""Where numbers were measured: the git state that results files record."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from oscar.runtime.provenance import cpu_model, environment, git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_state_sees_changes_except_under_excluded_paths(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "code.py").write_text("a = 1\n")
    (repo / "results" / "out.json").write_text("{}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    clean = git_state(repo)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False

    (repo / "results" / "out.json").write_text('{"new": 1}\n')
    assert git_state(repo, exclude=[repo / "results"])["dirty"] is False
    assert git_state(repo)["dirty"] is True
    (repo / "code.py").write_text("a = 2\n")
    state = git_state(repo, exclude=[repo / "results"])
    assert state["dirty"] is True
    assert state["changed"] == ["code.py"] and state["changed_count"] == 1
    _git(repo, "add", "code.py")  # staged changes count too
    assert git_state(repo)["changed"] == ["code.py", "results/out.json"]


def test_outside_a_checkout_there_is_no_commit(tmp_path):
    assert git_state(tmp_path) == {"commit": None}


def test_environment_names_machine_versions_and_commit():
    env = environment("cpu")
    assert env["machine"]["cpu"] == cpu_model() and env["machine"]["usable_cpus"] >= 1
    assert env["versions"]["torch"] and "commit" in env["git"]
