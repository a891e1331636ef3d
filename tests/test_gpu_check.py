"""benchmarks/gpu_check.py: a smoke run on CPU with tiny settings (every section present, with
numbers), a failing section recorded without stopping the run, an out-of-memory recorded."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
TINY = ["--device", "cpu", "--quick", "--norm-shapes", "2,4,2,4,4", "--frames", "8",
        "--size", "32", "--step-clips", "2", "--memory-clips", "1", "--steps", "1",
        "--repeats", "1", "--arch", "resnet3d_10", "--decode-items", "1",
        "--video-seconds", "1"]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_section_with_numbers(tmp_path):
    out = tmp_path / "report.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    gpu_check = load_gpu_check()
    for name in gpu_check.SECTIONS:
        assert f"## {gpu_check.TITLES[name]}" in report, name
    expected = {"env": "ok", "tests": "ok", "norm": "ok", "step": "ok", "memory": "ok",
                "decode": "ok" if importlib.util.find_spec("av") else "skipped"}
    assert {name: data[name]["status"] for name in expected} == expected, \
        {name: data[name]["note"] for name in data}
    assert data["env"]["torch"] == torch.__version__ and data["env"]["gpu"].startswith("none")
    assert data["tests"]["counts"].get("skipped", 0) > 0  # the CUDA tests skip on CPU
    norm_rows = data["norm"]["rows"]
    assert len(norm_rows) == 4  # fp32 / bf16 x contiguous / channels_last_3d
    assert all(t > 0 for r in norm_rows for t in r["times"].values())
    assert {"bn", "naive"} <= set(norm_rows[0]["times"])
    assert re.search(r"\| \(2, 4, 2, 4, 4\) \| bf16 \| channels_last_3d \| \d+\.\d+ \|", report)
    steps = data["step"]["rows"]
    assert [(r["norm"], r["status"]) for r in steps] == [("bn", "ok"), ("sn", "ok"), ("gn", "ok")]
    assert all(r["s_per_step"] > 0 and r["saved_mb"] > 0 for r in steps)
    memory = data["memory"]["rows"]
    assert [(r["amp"], r["checkpoint_stages"]) for r in memory] == \
        [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    assert all(r["status"] == "ok" and r["saved_mb"] > 0 for r in memory)
    assert memory[0]["config"] == "configs/i3d_r50_sn_k400_32x2_1pergpu.yaml"
    assert memory[1]["saved_mb"] < memory[0]["saved_mb"]  # checkpointing keeps less
    if expected["decode"] == "ok":
        assert data["decode"]["clips_per_s_per_worker"] > 0
        assert data["decode"]["workers_needed"]["2"] >= 1


def test_a_failing_section_is_recorded_and_the_next_one_runs():
    gpu_check = load_gpu_check()
    settings = gpu_check.settings_from(gpu_check_args(gpu_check))

    def broken(section, s, done):
        section.lines.append("| row | 1.0 |")
        raise RuntimeError("no such kernel\nsecond line")

    failed = gpu_check.run_section("norm", broken, settings, {})
    assert failed.status == "failed" and failed.note == "RuntimeError: no such kernel"
    assert "| row | 1.0 |" in failed.lines and any("Traceback" in x for x in failed.lines)
    env = gpu_check.run_section("env", gpu_check.section_env, settings, {})
    assert env.status == "ok" and env.data["torch"] == torch.__version__
    report = gpu_check.render([env, failed], settings, TINY, 1.0)
    assert "failed: RuntimeError: no such kernel" in report and "## Environment" in report


def test_out_of_memory_is_recorded_as_oom_and_other_errors_as_errors(monkeypatch):
    gpu_check = load_gpu_check()

    def oom(**kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu_check, "train_step_run", oom)
    assert gpu_check.guarded_run(clips=8) == {"status": "OOM"}
    assert gpu_check.memory_cell({"status": "OOM"}) == "OOM"

    def bad(**kwargs):
        raise ValueError("bad shape")

    monkeypatch.setattr(gpu_check, "train_step_run", bad)
    assert gpu_check.guarded_run(clips=8) == {"status": "error: ValueError: bad shape"}


def gpu_check_args(gpu_check):
    import argparse

    return argparse.Namespace(device="cpu", quick=True, norm_shapes="2,4,2,4,4", repeats=1,
                              frames=8, size=32, step_clips="2", memory_clips="1", steps=1,
                              arch="resnet3d_10", decode_items=1, video_seconds=1.0,
                              cap_scale=1.0)
