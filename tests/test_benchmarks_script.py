"""benchmarks/run.py: one command runs the groups and rewrites BENCHMARKS.md from their JSON."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from helpers import ROOT
from oscar.cli import build_parser
from oscar.cli import main as oscar_main


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_script():
    return _load("run.py")


def test_groups_are_the_ones_rendered(run_script):
    render = _load("render.py")
    assert tuple(run_script.GROUPS) == render.GROUP_NAMES
    parser = build_parser()
    for _, args, quick in run_script.GROUPS.values():  # every group is a valid oscar bench call
        for argv in (args, quick or args):
            assert parser.parse_args(["bench", *argv, "--model", "M"]).sizes


def test_render_fills_every_field(run_script, tiny_model_dir, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    argv = ["bench", "--model", str(tiny_model_dir), "--sizes", "64x48", "--steps", "1,20"]
    argv += ["--repeats", "1", "--warmup", "0", "--no-isolate"]
    assert oscar_main([*argv, "-o", str(results / "main.json")]) == 0
    doc = json.loads((results / "main.json").read_text())
    doc["results"][0]["config"].update(width=768, height=512)  # as if measured at that size
    doc["git"] = {"commit": "ab" * 20, "dirty": True, "changed": ["src/x.py"], "changed_count": 1}
    (results / "main.json").write_text(json.dumps(doc))
    four_k = copy.deepcopy(doc)
    four_k["results"][0]["config"].update(width=3840, height=2160)
    (results / "sizes-4k.json").write_text(json.dumps(four_k))
    out = tmp_path / "BENCHMARKS.md"
    assert run_script.main(["--render-only", "--results", str(results), "--output", str(out)]) == 0
    text = out.read_text()
    assert "{{" not in text and "whether the machine was idle is unknown" in text.lower()
    assert "decode 768×512 (median)" in text and "3840×2160 decode" in text
    assert "20-step/1-step ratio" in text and "_Not run._" in text  # groups not run say so
    assert "_Run on this page's machine only" in text  # no other machine yet
    assert "- Commit: ababababab (with uncommitted changes: `src/x.py`)" in text

    # Another machine's main group (as benchmarks/run.py --machine writes it): its own row in
    # the machines table and in the targets table, from its own numbers.
    other = copy.deepcopy(doc)
    one, twenty = other["results"][0]["decode"]["1"], other["results"][0]["decode"]["20"]
    one["total"]["wall_s"]["median"], twenty["total"]["wall_s"]["median"] = 0.5, 4.0
    twenty["time_vs_one_step"] = 8.0
    (results / "machines" / "slow-vm").mkdir(parents=True)
    (results / "machines" / "slow-vm" / "main.json").write_text(json.dumps(other))
    assert run_script.main(["--render-only", "--results", str(results), "--output", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| slow-vm |")]
    assert len(rows) == 1 and "| 0.500 |" in rows[0] and "| 4.000 | 8.0× | not run |" in rows[0]
    speed = doc["results"][0]["runtime"]["float32_gflops"]
    assert f"| {speed['matmul']:.0f} / {speed['conv3x3']:.0f} |" in rows[0]
    target = "| (another machine, `slow-vm`) the same ratio, 768×512, same model | ≥ 10× |"
    assert f"{target} 8.0× | **no** |" in text


def test_machine_runs_the_main_group_into_its_own_folder(
    run_script, tiny_model_dir, tmp_path, monkeypatch
):
    small = ["--sizes", "64x48", "--steps", "1,20", "--repeats", "1", "--warmup", "0", "--no-flops"]
    for group in ("main", "steps-1080p"):
        monkeypatch.setitem(run_script.GROUPS, group, (f"{group}, made small", small, None))
    results, out = tmp_path / "results", tmp_path / "B.md"
    argv = ["--model", str(tiny_model_dir), "--results", str(results), "--output", str(out)]
    assert run_script.main([*argv, "--machine", "vm-2"]) == 0
    folder = results / "machines" / "vm-2"
    assert sorted(p.name for p in folder.iterdir()) == ["main.json", "run.json", "steps-1080p.json"]
    assert not (results / "main.json").exists()  # the page's own results are left alone
    groups = json.loads((folder / "run.json").read_text())["groups"]
    assert [g["group"] for g in groups] == ["main", "steps-1080p"]
    for bad in (
        ["--machine", "../up"],
        ["--machine", "x", "--groups", "batch"],
        ["--machine", "x", "--quick"],
    ):
        with pytest.raises(SystemExit) as error:
            run_script.main([*argv, *bad])
        assert error.value.code == 2


@pytest.mark.slow
def test_one_command_runs_and_records(run_script, tiny_model_dir, tmp_path):
    results, out = tmp_path / "results", tmp_path / "B.md"
    argv = ["--model", str(tiny_model_dir), "--quick", "--groups", "batch"]
    assert run_script.main([*argv, "--results", str(results), "--output", str(out)]) == 0
    run = json.loads((results / "run.json").read_text())
    assert run["quick"] and "given with `--model`" in run["model"] and run["git"]["commit"]
    assert (run["level"], run["timestep"]) == (7, 150)  # tiny: the highest rate allows 20 steps
    (group,) = run["groups"]
    assert group["group"] == "batch" and group["elapsed_s"] > 0 and group["own_cpu_s"] > 0
    assert group["others_share"] >= 0
    batch = json.loads((results / "batch.json").read_text())
    assert [r["config"]["batch"] for r in batch["results"]] == [1, 2]
    text = out.read_text()
    assert "Smoke run" in text and "- Model: the model directory given" in text
    assert "took" in text and "Other processes' share of the CPU" in text
    flat = " ".join(text.split())
    assert "level 7, the highest-rate level whose pseudo-timestep (t = 150)" in flat


def test_a_partial_run_keeps_the_other_groups_records(run_script, tmp_path):
    """`--groups X` re-runs X only: run.json keeps the other groups' timings and both commands."""
    path = tmp_path / "run.json"

    def run(command, groups, model="m"):
        entries = [{"group": g, "elapsed_s": 1.0, "others_share": 0.01} for g in groups]
        return {"command": command, "started": "t", "elapsed_s": 2.0, "model": model,
                "level": 6, "quick": False, "groups": entries}  # fmt: skip

    path.write_text(json.dumps(run("full", ["main", "batch"])))
    merged = run_script.merged_with_earlier(run("--groups batch", ["batch"]), path)
    assert [g["group"] for g in merged["groups"]] == ["main", "batch"]
    assert [r["command"] for r in merged["runs"]] == ["full", "--groups batch"]
    path.write_text(json.dumps(merged))  # a third partial run appends again
    again = run_script.merged_with_earlier(run("--groups main", ["main"]), path)
    assert [r["command"] for r in again["runs"]] == ["full", "--groups batch", "--groups main"]
    other_model = run("--groups batch", ["batch"], model="another")
    assert run_script.merged_with_earlier(other_model, path) == other_model
    full = run("full", ["main", "batch"])  # nothing left to keep: a run of its own
    assert run_script.merged_with_earlier(full, path) == full
    assert run_script.merged_with_earlier(full, tmp_path / "missing.json") == full
