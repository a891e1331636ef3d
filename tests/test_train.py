"""train.py end to end on a tiny generated dataset: config errors, learning, DDP, resume,
accumulation, non-finite losses and atomic checkpoints."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

import train as train_script
from snvideo.engine import builders
from snvideo.engine.checkpoint import (load_checkpoint, remove_stale_temporaries,
                                       save_checkpoint)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {"arch": "resnet3d_10", "norm": "sn", "dropout": 0.0,
              "arch_kwargs": {"widen_factor": 0.125, "no_max_pool": True}}


def write_config(tmp_path, data_root, name="cfg.yaml", **sections) -> str:
    cfg = {
        "work_dir": str(tmp_path / "work"),
        "model": dict(TINY_MODEL),
        "data": {"root": str(data_root / "videos"),
                 "train_ann": str(data_root / "annotations" / "train.csv"),
                 "val_ann": str(data_root / "annotations" / "val.csv"),
                 "clip_len": 4, "frame_interval": 2, "batch_size": 4, "num_workers": 0,
                 "short_side": 32, "crop_size": 28},
        "train": {"epochs": 1, "lr": 0.05, "log_interval": 1, "clip_grad": None},
        "test": {"num_clips": 2, "num_crops": 1, "views_per_forward": 4, "num_workers": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# --- config errors ------------------------------------------------------------------------------
def test_unknown_key_exits_2_naming_it(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path, tiny_data)
    assert train_script.main(["--config", cfg, "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lrr" in err


def test_bad_type_exits_2(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path, tiny_data)
    assert train_script.main(["--config", cfg, "data.batch_size=two"]) == 2
    assert "data.batch_size must be int" in capsys.readouterr().err


def test_missing_files_exit_2(tmp_path, tiny_data, capsys):
    assert train_script.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    cfg = write_config(tmp_path, tiny_data, data={"train_ann": str(tmp_path / "missing.csv")})
    assert train_script.main(["--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "data.train_ann" in err and "missing.csv" in err
    cfg = write_config(tmp_path, tiny_data)
    assert train_script.main(["--config", cfg, "--resume", str(tmp_path / "gone.pt")]) == 2
    assert "gone.pt" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing started


# --- training -----------------------------------------------------------------------------------
def epoch_records(work_dir) -> list[dict]:
    with open(os.path.join(work_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "epoch"]


def test_training_lowers_loss_and_writes_outputs(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path, tiny_data, train={"epochs": 4, "lr": 0.1})
    assert train_script.main(["--config", cfg]) == 0
    work = tmp_path / "work"
    losses = [r["train_loss"] for r in epoch_records(work)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    ckpt = load_checkpoint(str(work / "latest.pt"))
    assert ckpt["epoch"] == 4 and ckpt["config"]["train"]["epochs"] == 4
    assert ckpt["classes"] == (work / "label_map.txt").read_text().split("\n")[:3]
    assert (work / "config.yaml").exists() and (work / "epoch_4.pt").exists()
    importance = json.loads((work / "sn_importance.json").read_text())
    assert importance and set(importance[0]["mean"]) == {"IN", "LN", "BN"}
    # stdout is not a terminal here: plain progress lines, no bar's carriage returns
    captured = capsys.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch 4/4 ") and "iteration" in line]
    assert lines and all(re.search(r"\d+/\d+ \(\d+%\) iteration \d+ loss \d+\.\d+ lr \S+ clips/s \S+ "
                                   r"\S+ batch/s ETA \d+:\d\d:\d\d$", line) for line in lines), lines


def test_accumulation_matches_larger_batch(tmp_path, tiny_data):
    """batch 4 == 2 x 2 accumulated, for a GroupNorm model (no batch statistics)."""
    model = {**TINY_MODEL, "norm": "gn", "norm_kwargs": {"num_groups": 4}}
    results = []
    for batch, accumulate in ((4, 1), (2, 2)):
        sub = tmp_path / f"b{batch}"
        sub.mkdir()
        cfg = write_config(sub, tiny_data, model=model, data={"batch_size": batch},
                           train={"accumulate": accumulate, "lr": 0.1})
        assert train_script.main(["--config", cfg]) == 0
        results.append(load_checkpoint(str(sub / "work" / "latest.pt"))["model"])
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-4, atol=1e-5, msg=key)


class NanOnCalls(torch.nn.Module):
    """Wraps a model; training forwards number `nan_calls` (1-based) return NaN logits."""

    def __init__(self, model, nan_calls):
        super().__init__()
        self.model, self.nan_calls, self.calls = model, nan_calls, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls in self.nan_calls or "all" in self.nan_calls:
                out = out * float("nan")
        return out


def test_nonfinite_loss_is_skipped_and_counted(tmp_path, tiny_data, capsys, monkeypatch):
    build = builders.model_from_config
    monkeypatch.setattr(builders, "model_from_config", lambda *a: NanOnCalls(build(*a), {2}))
    cfg = write_config(tmp_path, tiny_data, train={"epochs": 1})
    assert train_script.main(["--config", cfg]) == 0
    assert "1 non-finite steps skipped" in capsys.readouterr().out
    assert epoch_records(tmp_path / "work")[0]["nonfinite_skipped"] == 1
    state = load_checkpoint(str(tmp_path / "work" / "latest.pt"))["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_repeated_nonfinite_losses_abort_naming_the_iteration(tmp_path, tiny_data, capsys,
                                                              monkeypatch):
    build = builders.model_from_config
    monkeypatch.setattr(builders, "model_from_config", lambda *a: NanOnCalls(build(*a), {"all"}))
    cfg = write_config(tmp_path, tiny_data, train={"epochs": 2, "max_nonfinite": 2})
    assert train_script.main(["--config", cfg]) == 1
    assert "the last at iteration 2" in capsys.readouterr().err
    assert not (tmp_path / "work" / "latest.pt").exists()


# --- checkpoints and resume ---------------------------------------------------------------------
def test_resume_continues_from_latest(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path, tiny_data)
    assert train_script.main(["--config", cfg]) == 0
    capsys.readouterr()
    assert train_script.main(["--config", cfg, "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'work' / 'latest.pt'} at epoch 1" in out
    assert load_checkpoint(str(tmp_path / "work" / "latest.pt"))["epoch"] == 2
    assert [r["epoch"] for r in epoch_records(tmp_path / "work")] == [1, 2]
    assert train_script.main(["--config", cfg, "train.epochs=2", "--no-resume"]) == 0
    assert "resuming" not in capsys.readouterr().out


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pt")
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["latest.pt"]


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    save_checkpoint({"epoch": 1}, str(tmp_path / "latest.pt"))
    (tmp_path / "best.pt.tmp.12345").write_bytes(b"half a checkpoint")
    assert remove_stale_temporaries(str(tmp_path)) == [str(tmp_path / "best.pt.tmp.12345")]
    assert os.listdir(tmp_path) == ["latest.pt"]


# --- distributed --------------------------------------------------------------------------------
# (two processes, restarts and two nodes: tests/test_resume.py)
def test_cpu_threads_leave_cores_to_data_workers(monkeypatch):
    from snvideo.engine.distributed import DistEnv, set_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    try:
        assert set_cpu_threads(DistEnv(), data_workers=3) == 5
        assert torch.get_num_threads() == 5
        assert set_cpu_threads(DistEnv(world_size=2), data_workers=1) == 3  # 4 cores each
        assert set_cpu_threads(DistEnv(), data_workers=20) == 1
        assert set_cpu_threads(DistEnv(device=torch.device("cuda", 0)), 1) is None
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert set_cpu_threads(DistEnv(), data_workers=1) is None  # the user's choice stands
    finally:
        torch.set_num_threads(before)


# --- recomputed statistics: train.sn_batch_average and test.py --recompute-norm-stats ----------
def test_batch_average_leaves_training_unchanged_and_test_py_recomputes_it(tmp_path, tiny_data,
                                                                          capsys):
    """What the small-batch study's side runs rely on: recomputing norm statistics after an
    epoch changes no trained weight (statistics never enter a training forward), so test.py
    --recompute-norm-stats on the plain run's weights is that training's result."""
    import test as test_script

    states = {}
    for flag in (False, True):
        work = tmp_path / f"avg_{flag}"
        cfg = write_config(tmp_path, tiny_data, name=f"avg_{flag}.yaml", work_dir=str(work),
                           train={"epochs": 2, "sn_batch_average": flag,
                                  "sn_batch_average_batches": 2},
                           test={"after_train": False})
        assert train_script.main(["--config", cfg]) == 0
        states[flag] = load_checkpoint(str(work / "latest.pt"))["model"]
    plain, averaged = states[False], states[True]
    stats = [k for k in plain if "running_" in k or k.endswith("num_batches_tracked")]
    assert stats
    for key, value in plain.items():
        if key not in stats:
            assert torch.equal(value, averaged[key]), key
    assert any(not torch.equal(plain[k], averaged[k]) for k in stats if "running_var" in k)

    capsys.readouterr()
    out = tmp_path / "recomputed.json"
    assert test_script.main(["--checkpoint", str(tmp_path / "avg_False" / "latest.pt"),
                             "--recompute-norm-stats", "2", "--out", str(out)]) == 0
    assert "norm statistics recomputed over 2 batches of 4 clips" in capsys.readouterr().out
    assert 0.0 <= json.loads(out.read_text())["top1"] <= 100.0
    assert test_script.main(["--checkpoint", str(tmp_path / "avg_False" / "latest.pt"),
                             "--recompute-norm-stats", "-1"]) == 2
    assert "--recompute-norm-stats" in capsys.readouterr().err


def test_data_cache_trains_as_from_the_files(tmp_path, tiny_data):
    """data.cache changes where frames come from, not what a training run sees."""
    states = {}
    for cache in (False, True):
        work = tmp_path / f"cache_{cache}"
        cfg = write_config(tmp_path, tiny_data, name=f"cache_{cache}.yaml", work_dir=str(work),
                           data={"cache": cache}, train={"epochs": 2},
                           test={"after_train": False})
        assert train_script.main(["--config", cfg]) == 0
        states[cache] = load_checkpoint(str(work / "latest.pt"))["model"]
    for key, value in states[False].items():
        assert torch.equal(value, states[True][key]), key


def test_data_cache_bound_must_be_positive(tmp_path, tiny_data, capsys):
    cfg = write_config(tmp_path, tiny_data, data={"cache": True, "cache_max_gb": 0})
    assert train_script.main(["--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.cache_max_gb" in err
