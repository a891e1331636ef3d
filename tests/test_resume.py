"""Long runs: mid-epoch checkpoints and exact resume, corrupt checkpoints, retention, SIGTERM,
torchrun restarts of a killed worker, two nodes on localhost, resume across machines and amp
modes. All on CPU (gloo where distributed), on the tiny generated dataset of test_train.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train as train_script
from snvideo.data import ResumableSampler
from snvideo.engine import checkpoint as checkpoint_module
from snvideo.engine.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from snvideo.engine.logbook import Logbook
from test_train import REPO, epoch_records, write_config

# 12 training videos, 2 clips a batch: 6 updates an epoch, latest.pt after every 2nd
RESUME_TRAIN = {"epochs": 2, "lr": 0.05, "checkpoint_every_iters": 2, "keep_checkpoints": 0,
                "val_interval": 2}
RESUME_DATA = {"batch_size": 2}


def resume_config(tmp_path, data_root, **sections):
    sections = {"train": dict(RESUME_TRAIN), "data": dict(RESUME_DATA), **sections}
    return write_config(tmp_path, data_root, **sections)


def records(work) -> list[dict]:
    with open(os.path.join(work, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(work, name="latest.pt") -> dict:
    return load_checkpoint(os.path.join(work, name))["model"]


def assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a
                if a[k].is_floating_point())
    assert worst <= tol, worst


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    """The same records in the same order (no duplicates, none missing), values up to float
    rounding; timings differ."""
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
    for g, w in zip(got, want):
        for key in ("loss", "lr", "train_loss", "val_top1", "nonfinite_skipped"):
            if key in w:
                assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (key, g, w)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """An uninterrupted run of the resume config: (weights, metrics records)."""
    tmp = tmp_path_factory.mktemp("reference")
    assert train_script.main(["--config", resume_config(tmp, tiny_data)]) == 0
    return weights(tmp / "work"), records(tmp / "work")


# --- sampler and per-sample randomness ---------------------------------------------------------
def test_sampler_order_is_fixed_by_seed_and_epoch_and_can_start_mid_epoch():
    shares = [ResumableSampler(10, num_replicas=3, rank=r, seed=4) for r in range(3)]
    for s in shares:
        s.set_epoch(2)
    keys = [list(s) for s in shares]
    indices = [i for share in keys for i, _ in share]
    assert len(indices) == 9 and len(set(indices)) == 9  # a partition, tail dropped
    assert all(epoch == 2 for share in keys for _, epoch in share)
    again = ResumableSampler(10, num_replicas=3, rank=1, seed=4)
    again.set_epoch(2, start=2)
    assert len(again) == 1 and list(again) == keys[1][2:]
    assert len(list(again)) == 3  # the next pass starts from the beginning again
    again.set_epoch(3)
    assert list(again) != keys[1]


def test_training_items_depend_on_sample_and_epoch_only(tiny_data):
    from snvideo.data import VideoDataset, train_transform

    ds = VideoDataset(tiny_data / "annotations" / "train.csv", tiny_data / "videos", clip_len=4,
                      transform=train_transform(32, 28), seed=3)
    torch.manual_seed(0)
    first = ds[(5, 1)][0]
    torch.manual_seed(123)  # a worker's RNG state does not matter
    assert torch.equal(ds[(5, 1)][0], first)
    assert not torch.equal(ds[(5, 2)][0], first)  # another epoch: another clip / crop


# --- exact resume -------------------------------------------------------------------------------
class Crash(BaseException):
    """Stands for SIGKILL: nothing of the process survives but its files."""


def crash_at_record(monkeypatch, step):
    log = Logbook.log

    def crashing(self, kind, at, **values):
        log(self, kind, at, **values)
        if kind == "train" and at == step:
            raise Crash

    monkeypatch.setattr(Logbook, "log", crashing)


def test_crash_mid_epoch_resumes_exactly(tmp_path, tiny_data, reference, monkeypatch, capsys):
    """Killed after iteration 9 (latest.pt is from iteration 8, epoch 2): the rerun repeats
    iteration 9 once, ends with the uninterrupted run's weights, and its metrics.jsonl has
    each record once. It also runs with a DataLoader worker where the reference had none."""
    cfg = resume_config(tmp_path, tiny_data)
    crash_at_record(monkeypatch, 9)
    with pytest.raises(Crash):
        train_script.main(["--config", cfg])
    monkeypatch.undo()
    work = tmp_path / "work"
    assert records(work)[-1]["step"] == 9  # written after latest.pt
    assert load_checkpoint(str(work / "latest.pt"))["batches_done"] == 2
    capsys.readouterr()
    assert train_script.main(["--config", cfg, "data.num_workers=1"]) == 0
    assert f"resuming from {work / 'latest.pt'} at epoch 1, batch 2" in capsys.readouterr().out
    assert_same_weights(weights(work), reference[0])
    assert_same_records(records(work), reference[1])


def test_sigterm_finishes_the_update_writes_latest_and_exits_143(tmp_path, tiny_data, reference,
                                                                 monkeypatch, capsys):
    cfg = resume_config(tmp_path, tiny_data, train={**RESUME_TRAIN, "checkpoint_every_iters": 0})
    log = Logbook.log

    def signalling(self, kind, at, **values):
        log(self, kind, at, **values)
        if kind == "train" and at == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Logbook, "log", signalling)
    assert train_script.main(["--config", cfg]) == 143
    monkeypatch.undo()
    assert "stopped by SIGTERM in epoch 1" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler removed again
    ckpt = load_checkpoint(str(tmp_path / "work" / "latest.pt"))
    assert (ckpt["epoch"], ckpt["batches_done"]) == (0, 3)
    assert train_script.main(["--config", cfg]) == 0
    assert_same_weights(weights(tmp_path / "work"), reference[0])
    assert_same_records(records(tmp_path / "work"), reference[1])


@pytest.mark.slow
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, tiny_data, reference):
    """A real SIGKILL at whatever point the run reached after its first mid-epoch latest.pt."""
    cfg = resume_config(tmp_path, tiny_data, train={**RESUME_TRAIN, "checkpoint_every_iters": 1})
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), "--config", cfg],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "latest.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (work / "latest.pt").exists()
    done = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--config", cfg],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    assert load_checkpoint(str(work / "latest.pt"))["epoch"] == 2
    assert not [p for p in os.listdir(work) if ".tmp" in p]
    assert_same_weights(weights(work), reference[0])
    assert_same_records(records(work), reference[1])


# --- corrupt checkpoints and retention ----------------------------------------------------------
def test_retention_and_corrupt_checkpoint_fallback(tmp_path, tiny_data, capsys):
    work = tmp_path / "work"
    cfg = write_config(tmp_path, tiny_data, train={"epochs": 2, "keep_checkpoints": 1})
    assert train_script.main(["--config", cfg]) == 0
    assert sorted(p for p in os.listdir(work) if p.endswith(".pt")) == \
        ["best.pt", "epoch_2.pt", "latest.pt"]
    data = (work / "latest.pt").read_bytes()
    (work / "latest.pt").write_bytes(data[: len(data) // 2])  # cut short
    capsys.readouterr()
    assert train_script.main(["--config", cfg, "train.epochs=3"]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "latest.pt" in line]
    assert len(warnings) == 1 and "cannot read checkpoint" in warnings[0]
    assert f"resuming from {work / 'epoch_2.pt'} at epoch 2" in out
    assert [r["epoch"] for r in epoch_records(work)] == [1, 2, 3]
    assert sorted(p for p in os.listdir(work) if p.startswith("epoch_")) == ["epoch_3.pt"]

    for name in ("latest.pt", "epoch_3.pt"):
        (work / name).write_bytes(b"not a checkpoint")
    assert train_script.main(["--config", cfg, "train.epochs=4"]) == 0  # best.pt only if nothing else
    out, err = capsys.readouterr()
    assert f"resuming from {work / 'best.pt'} at epoch " in out
    assert len([line for line in err.splitlines() if "cannot read checkpoint" in line]) == 2
    steps = [r["epoch"] for r in epoch_records(work)]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # records after best.pt rewritten

    for path in work.glob("*.pt"):
        path.write_bytes(b"garbage")
    assert train_script.main(["--config", cfg, "train.epochs=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no readable checkpoint in {work}")
    assert "latest.pt" in err[0] and "best.pt" in err[0] and "--no-resume" in err[0]


# --- another machine, another amp mode ----------------------------------------------------------
def test_cuda_rng_states_restore_what_fits(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((int(s[0]), i)))
    state = checkpoint_module.rng_state()
    state["cuda"] = [torch.full((16,), k, dtype=torch.uint8) for k in range(8)]  # an 8-GPU node
    set_rng_state(state, torch.device("cuda", 3))
    assert restored == [(3, 3)]  # only this process's own GPU
    set_rng_state(state, torch.device("cuda", 9))  # beyond what was saved: left alone
    set_rng_state(state, torch.device("cpu"))
    assert restored == [(3, 3)]


def test_resume_across_amp_modes_and_from_a_machine_with_more_gpus(tmp_path, tiny_data, capsys):
    work = tmp_path / "work"
    cfg = write_config(tmp_path, tiny_data, train={"epochs": 1, "amp": "off", "val_interval": 9})
    assert train_script.main(["--config", cfg]) == 0
    ckpt = load_checkpoint(str(work / "latest.pt"))
    eight_gpus = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(8)]
    ckpt["rng"]["cuda"] = eight_gpus
    for state in ckpt["rng_per_rank"]:
        state["cuda"] = eight_gpus
    save_checkpoint(ckpt, str(work / "latest.pt"))
    capsys.readouterr()
    for epochs, amp in ((2, "fp16"), (3, "bf16")):
        # quoted: YAML reads a bare off as false
        assert train_script.main(["--config", cfg, f"train.epochs={epochs}",
                                  f"train.amp='{amp}'"]) == 0, amp
        out = capsys.readouterr().out
        assert f"at epoch {epochs - 1}" in out
        fresh_scale = "starting with a fresh loss scale" in out
        assert fresh_scale == (amp == "fp16"), out  # off -> fp16: no scale saved
        ckpt = load_checkpoint(str(work / "latest.pt"))
        assert ckpt["amp"] == amp and bool(ckpt["scaler"]) == (amp == "fp16")


def test_device_option_names_the_gpu(monkeypatch, tmp_path, tiny_data, capsys):
    from snvideo.config import ConfigError
    from snvideo.engine.distributed import pick_device

    if not torch.cuda.is_available():
        cfg = write_config(tmp_path, tiny_data)
        assert train_script.main(["--config", cfg, "--device", "cuda:1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: --device cuda:1: CUDA is not available on this machine"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device(None) == torch.device("cuda", 0)
    assert pick_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(ConfigError, match="GPU 2 does not exist"):
        pick_device("cuda:1", local_rank=1)
    with pytest.raises(ConfigError, match="not a device"):
        pick_device("gpu0")


def test_scaler_state_is_kept_for_fp16_and_dropped_across_modes():
    from snvideo.engine.resume import load_scaler_state

    saved = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fp16 = torch.amp.GradScaler("cpu")
    assert load_scaler_state(fp16, {"scaler": saved.state_dict(), "amp": "fp16"}, "fp16") is None
    assert fp16.get_scale() == 1024.0
    note = load_scaler_state(torch.amp.GradScaler("cpu"), {"scaler": {}, "amp": "bf16"}, "fp16")
    assert "train.amp=bf16" in note and "fresh loss scale" in note
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert load_scaler_state(off, {"scaler": saved.state_dict(), "amp": "fp16"}, "off") is None


def test_fp16_overflow_skips_are_not_counted_as_nonfinite_losses():
    from snvideo.engine.nonfinite import NonFiniteGuard, NonFiniteLossError

    guard = NonFiniteGuard(torch.device("cpu"), fp16=True, max_nonfinite=2)
    guard.add_loss(torch.tensor(1.5))
    guard.add_update(torch.tensor(True), iteration=0)  # loss scale overflow: GradScaler's job
    guard.add_loss(torch.tensor(float("nan")))
    guard.add_update(torch.tensor(True), iteration=1)
    guard.add_loss(torch.tensor(0.5))
    guard.add_update(torch.tensor(False), iteration=2)
    assert guard.flush(False, str) == (1, 2.0, 2)
    for i in (3, 4):
        guard.add_loss(torch.tensor(float("inf")))
        guard.add_update(torch.tensor(True), iteration=i)
    with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row, the last at 4"):
        guard.flush(False, str)


# --- torchrun -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def worker_pid(agent_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker process of `rank` (Linux /proc)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == agent_pid and f"RANK={rank}".encode() in environ:
            return int(name)
    return None


def test_a_restarted_round_does_not_see_the_previous_rounds_keys(monkeypatch):
    """The cause of the failed torchrun restarts: torchrun keeps one store for all rounds, and
    a restarted worker read the killed round's peer addresses from it."""
    from snvideo.engine.distributed import _round_store

    port = free_port()
    server = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = _round_store(rank=0, world_size=2)
    first.set("default_pg/rank_1", "address of a worker that was killed")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = _round_store(rank=0, world_size=2)
    assert not second.check(["default_pg/rank_1"])
    assert first.check(["default_pg/rank_1"])
    del first, second, server


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the worker through /proc")
@pytest.mark.parametrize("rendezvous", ["default", "standalone"])
def test_torchrun_max_restarts_survives_a_sigkilled_worker(tmp_path, tiny_data, rendezvous):
    """The restarted group connects (no stale addresses of the killed round), resumes from
    the mid-epoch latest.pt and ends after the configured epochs, each logged once."""
    cfg = resume_config(tmp_path, tiny_data, data={"batch_size": 2, "num_workers": 1},
                        train={**RESUME_TRAIN, "checkpoint_every_iters": 1})
    work = tmp_path / "work"
    launch = ["--standalone"] if rendezvous == "standalone" else [f"--master-port={free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(torchrun(*launch, "--nproc_per_node=2", "--max-restarts=1",
                                         os.path.join(REPO, "train.py"), "--config", cfg),
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 240
        while not (work / "latest.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        victim = worker_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None
        os.kill(victim, signal.SIGKILL)
        try:
            proc.wait(timeout=240)
        finally:
            proc.kill()
    output = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "resuming from" in output and "connectFullMesh" not in output
    assert load_checkpoint(str(work / "latest.pt"))["epoch"] == 2
    assert [r["epoch"] for r in epoch_records(work)] == [1, 2]
    steps = [r["step"] for r in records(work) if r["kind"] == "train"]
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_two_nodes_on_localhost_equal_one_node_of_two(tmp_path, tiny_data):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for layout in ("one_node", "two_nodes"):
        sub = tmp_path / layout
        sub.mkdir()
        cfg = write_config(sub, tiny_data, data={"batch_size": 2},
                           train={"epochs": 1, "sync_norm": True})
        script = [os.path.join(REPO, "train.py"), "--config", cfg]
        if layout == "one_node":
            procs = [subprocess.Popen(torchrun("--standalone", "--nproc_per_node=2", *script),
                                      cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)]
        else:
            endpoint = f"127.0.0.1:{free_port()}"
            procs = [subprocess.Popen(torchrun("--nnodes=2", f"--node_rank={node}",
                                               "--nproc_per_node=1", "--rdzv_backend=c10d",
                                               f"--rdzv_endpoint={endpoint}", "--rdzv_id=two",
                                               *script),
                                      cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
        for p in procs:
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, out[-3000:]
        ckpt = load_checkpoint(str(sub / "work" / "latest.pt"))
        assert ckpt["epoch"] == 1 and ckpt["layout"][0] == 2
        assert any(k.endswith("mean_weight") for k in ckpt["model"])
        assert not any(k.startswith("module.") for k in ckpt["model"])
        results[layout] = ckpt["model"]
    assert_same_weights(results["two_nodes"], results["one_node"], tol=1e-6)
