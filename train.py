"""Train a video classifier.

    python train.py                                    # the demo: configs/demo.yaml, end to end
    python train.py --config configs/i3d_r50_sn_k400_32x2_8pergpu.yaml data.batch_size=4 train.lr=0.005
    torchrun --nproc_per_node=8 train.py --config CFG   # DistributedDataParallel, one process per GPU

Re-running the same command resumes from work_dir/latest.pt (mid-epoch when it was written
mid-epoch); --no-resume starts over. SIGTERM stops after the current update, writes latest.pt
and exits with status 143.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from snvideo.config import Config, ConfigError, TestConfig, load_config, save_config
from snvideo.data.datasets import ResumableSampler, collate_clips
from snvideo.data.worker_memory import init_worker
from snvideo.engine import builders
from snvideo.engine.batches import model_inputs, to_model_input
from snvideo.engine.checkpoint import (all_finite, prune_epoch_checkpoints,
                                       remove_stale_temporaries, rng_state, save_checkpoint,
                                       set_rng_state, unwrap)
from snvideo.engine.distributed import (DistEnv, all_gather_objects, all_reduce_sum, any_rank,
                                        barrier, cleanup, enable_cudnn_benchmark,
                                        init_distributed, set_cpu_threads)
from snvideo.engine.logbook import Logbook
from snvideo.engine.nonfinite import (NonFiniteGuard, NonFiniteLossError, guarded_step,
                                      poison_if_nonfinite)
from snvideo.engine.resume import (EpochTotals, ResumePoint, StopRequest, choose_checkpoint,
                                   load_scaler_state, resume_point, truncate_metrics)
from snvideo.norm import convert_sync_switchnorm, recompute_norm_stats, set_sparsity_radius
from snvideo.progress import progress

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.yaml")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: the demo)")
    parser.add_argument("--resume", metavar="PATH", help="resume from this checkpoint")
    parser.add_argument("--no-resume", action="store_true", help="ignore work_dir/latest.pt")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available; "
                        "under torchrun GPU K + LOCAL_RANK)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.lr=0.01 data.batch_size=4")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.resume and not os.path.isfile(args.resume):
            raise ConfigError(f"--resume: checkpoint not found: {args.resume}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        env = init_distributed(args.device)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if cfg.data.demo_dir:
            prepare_demo(cfg, env)
        builders.check_data_paths(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        cleanup(env)
        return 2
    try:
        status = train(cfg, args, env)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        cleanup(env)
    return status


def prepare_demo(cfg: Config, env: DistEnv) -> None:
    """Generate the demo dataset into data.demo_dir on first use (rank 0; the others wait)."""
    if env.is_main:
        from snvideo.data.synthetic import make_demo_dataset

        try:
            make_demo_dataset(cfg.data.demo_dir, **cfg.data.demo_kwargs)
        except TypeError as e:
            raise ConfigError(f"data.demo_kwargs: {e}") from None
    barrier(env)


def train(cfg: Config, args: argparse.Namespace, env: DistEnv) -> int:
    """Train (resuming where a checkpoint left off); the exit status: 0, or 143 on SIGTERM."""
    t = cfg.train
    for key in ("checkpoint_every_iters", "keep_checkpoints"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(t, key)}")
    set_cpu_threads(env, cfg.data.num_workers)
    enable_cudnn_benchmark(env.device)
    torch.manual_seed(t.seed + env.rank)
    train_set = builders.train_dataset(cfg)
    classes = list(train_set.classes)
    num_classes = cfg.model.num_classes or len(classes)
    val_set = builders.eval_dataset(cfg, cfg.data.val_ann, num_clips=1, num_crops=1,
                                    classes=classes)
    loader = make_train_loader(train_set, cfg, env)
    updates_per_epoch = epoch_batches(loader) // t.accumulate
    if updates_per_epoch == 0:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} x train.accumulate={t.accumulate} "
                          f"exceeds the {len(train_set)} training videos per process")

    model = builders.model_from_config(cfg.model, num_classes)
    if cfg.model.pretrained2d:
        from snvideo.models import load_pretrained_2d

        load_pretrained_2d(model, cfg.model.pretrained2d)
    model = builders.finetune_model(model, cfg.model, num_classes,
                                    log=print if env.is_main else None)
    if t.sync_norm and env.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(convert_sync_switchnorm(model))
    model.to(env.device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    optimizer = builders.build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, builders.lr_lambda(cfg, updates_per_epoch))
    scaler = torch.amp.GradScaler(env.device.type, enabled=t.amp == "fp16")

    point = ResumePoint()
    if env.is_main:
        remove_stale_temporaries(cfg.work_dir)
    found = choose_checkpoint(args.resume, args.no_resume, cfg.work_dir, env)
    if found:
        resume_path, ckpt = found
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler_note = load_scaler_state(scaler, ckpt, t.amp)
        point = resume_point(ckpt, env, run_layout(cfg, env))
        if point.rng is not None:
            set_rng_state(point.rng, env.device)
        if env.is_main:
            truncate_metrics(cfg.work_dir, ckpt, resume_path)
            within = f", batch {point.batches_done}" if point.batches_done else ""
            print(f"resuming from {resume_path} at epoch {point.epoch}{within}")
            if scaler_note:
                print(scaler_note)
        del ckpt

    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.distributed else None
    run_model = ddp or model
    if t.compile:
        run_model = torch.compile(run_model)

    logbook = Logbook(cfg.work_dir, enabled=env.is_main)
    if env.is_main:
        save_config(cfg, os.path.join(cfg.work_dir, "config.yaml"))
        train_set.write_label_map(os.path.join(cfg.work_dir, "label_map.txt"))
    best_top1 = point.best_top1

    def save_training_state(epoch: int, batches_done: int, totals: EpochTotals,
                            names: list[str]) -> None:
        """Write the checkpoint files `names` (collective: every process calls it)."""
        rngs = all_gather_objects(rng_state(), env)
        if not env.is_main:
            return
        state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "amp": t.amp, "epoch": epoch, "batches_done": batches_done,
                 "epoch_totals": totals.to_dict(), "layout": run_layout(cfg, env),
                 "config": cfg.to_dict(), "classes": classes, "rng": rngs[0],
                 "rng_per_rank": rngs, "best_top1": best_top1,
                 "metrics_bytes": logbook.size()}
        for name in names:
            save_checkpoint(state, os.path.join(cfg.work_dir, name))

    stop = StopRequest()
    try:
        for epoch in range(point.epoch, t.epochs):
            resumed = epoch == point.epoch and point.batches_done > 0
            start_batch = point.batches_done if resumed else 0
            totals = point.totals if resumed else EpochTotals()
            loader.sampler.set_epoch(epoch, start_batch * cfg.data.batch_size)
            if not resumed:  # a resumed epoch continues with the checkpoint's RNG states
                torch.manual_seed(t.seed * 1_000_003 + epoch * 1009 + env.rank)
            train_set.reset_failures()

            def save_latest(batches_done: int) -> None:
                totals.failed += int(all_reduce_sum([train_set.num_failed], env)[0])
                train_set.reset_failures()
                save_training_state(epoch, batches_done, totals, ["latest.pt"])

            finished = train_one_epoch(run_model, ddp, loader, optimizer, scheduler, scaler, cfg,
                                       env, epoch, logbook, totals, start_batch, save_latest, stop)
            if not finished:
                return stopped(env, cfg, epoch)
            failed = totals.failed + int(all_reduce_sum([train_set.num_failed], env)[0])
            if t.sn_batch_average:
                recompute_norm_stats(model, model_inputs(loader, env.device, train_set.transform,
                                                         t.channels_last),
                                     t.sn_batch_average_batches)
            record = {"epoch": epoch + 1, "train_loss": totals.loss_sum / max(totals.loss_count, 1),
                      "nonfinite_skipped": totals.nonfinite_skipped,
                      "epoch_time_s": round(totals.time_s, 1), "unreadable_videos": failed}
            if (epoch + 1) % t.val_interval == 0 or epoch + 1 == t.epochs:
                val = validate(model, val_set, cfg, env)
                record.update(val_top1=val["top1"], val_top5=val["top5"],
                              val_failed=val["num_failed"])
                best_top1 = max(best_top1, val["top1"] or 0.0)  # None: no readable video
            if env.is_main:
                print(format_epoch(record, t.epochs))
            logbook.log("epoch", epoch + 1, **record)
            if not all_finite(model):
                raise NonFiniteLossError(f"non-finite weights after epoch {epoch + 1}; not saving")
            names = [f"epoch_{epoch + 1}.pt", "latest.pt"]
            if record.get("val_top1") == best_top1:
                names.append("best.pt")
            save_training_state(epoch + 1, 0, EpochTotals(), names)
            if env.is_main:
                prune_epoch_checkpoints(cfg.work_dir, t.keep_checkpoints)
            barrier(env)
            if epoch + 1 < t.epochs and any_rank(stop.requested, env):
                return stopped(env, cfg, epoch + 1)
    finally:
        stop.close()
        logbook.close()
    if env.is_main:
        report_sn_importance(model, cfg.work_dir)
    if cfg.test.after_train:
        run_final_test(model, cfg, classes, env)
    return 0


def stopped(env: DistEnv, cfg: Config, epoch: int) -> int:
    if env.is_main:
        print(f"stopped by SIGTERM in epoch {epoch + 1}; {os.path.join(cfg.work_dir, 'latest.pt')} "
              f"written, the same command continues", file=sys.stderr)
    return StopRequest.EXIT_CODE


def run_layout(cfg: Config, env: DistEnv) -> list[int]:
    """What a mid-epoch position depends on: processes, clips per batch, accumulation."""
    return [env.world_size, cfg.data.batch_size, cfg.train.accumulate]


def make_train_loader(dataset, cfg: Config, env: DistEnv) -> DataLoader:
    """Batches in an order fixed by (train.seed, epoch); data randomness seeded per sample."""
    sampler = ResumableSampler(len(dataset), num_replicas=env.world_size, rank=env.rank,
                               seed=cfg.train.seed)
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler,
                      num_workers=workers, drop_last=True, pin_memory=env.device.type == "cuda",
                      collate_fn=collate_clips, worker_init_fn=init_worker,
                      persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(cfg.train.seed))


def epoch_batches(loader: DataLoader) -> int:
    """Micro-batches in a whole epoch of this process (also while resuming mid-epoch)."""
    return loader.sampler.num_samples // loader.batch_size


def train_one_epoch(model: nn.Module, ddp, loader: DataLoader, optimizer, scheduler, scaler,
                    cfg: Config, env: DistEnv, epoch: int, logbook: Logbook, totals: EpochTotals,
                    start_batch: int, save_latest, stop: StopRequest) -> bool:
    """One pass over the training set from micro-batch `start_batch`: forward, backward, an
    update every `accumulate` batches; `totals` accumulates the epoch's sums. Writes latest.pt
    every train.checkpoint_every_iters updates; returns False when SIGTERM stopped it."""
    t = cfg.train
    model.train()
    micro_batches = epoch_batches(loader) // t.accumulate * t.accumulate
    updates_per_epoch = micro_batches // t.accumulate
    autocast = torch.autocast(env.device.type, dtype=AMP_DTYPES[t.amp]) if t.amp != "off" \
        else contextlib.nullcontext()
    bar = progress(total=micro_batches, initial=start_batch, desc=f"epoch {epoch + 1}/{t.epochs}",
                   unit="batch", disable=not env.is_main)  # lines in a log file, a bar on a terminal
    guard = NonFiniteGuard(env.device, t.amp == "fp16", t.max_nonfinite, totals.consecutive_skips)

    def iteration(step: int) -> str:
        return f"iteration {epoch * micro_batches + step + 1} (epoch {epoch + 1}, batch {step + 1})"

    def flush() -> None:  # the one host sync of a log interval
        skipped, loss_sum, loss_count = guard.flush(env.distributed, iteration)
        totals.nonfinite_skipped += skipped
        totals.loss_sum += loss_sum
        totals.loss_count += loss_count
        totals.consecutive_skips = guard.consecutive

    start, window_start, window_clips = time.time(), time.time(), 0
    for step, (clips, labels) in enumerate(loader, start=start_batch):
        if step >= micro_batches:
            break
        # uint8 from the workers (the standard transform): normalized once, on the device
        clips = to_model_input(clips, env.device, getattr(loader.dataset, "transform", None),
                               t.channels_last)
        labels = labels.to(env.device, non_blocking=True)
        # Sparse SN: the sparsestmax radius grows from 0 to 1 over all of training
        set_sparsity_radius(model, (epoch * micro_batches + step) / (t.epochs * micro_batches))
        last_in_group = (step + 1) % t.accumulate == 0
        no_sync = ddp.no_sync() if ddp is not None and not last_in_group else contextlib.nullcontext()
        with no_sync:
            with autocast:
                loss = F.cross_entropy(model(clips).float(), labels)
            guard.add_loss(loss)
            # a non-finite loss makes every process's gradients NaN: all skip this update
            scaler.scale(poison_if_nonfinite(loss) / t.accumulate).backward()
        if last_in_group:
            guard.add_update(guarded_step(model, optimizer, scaler, t.clip_grad), step)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        window_clips += clips.shape[0] * env.world_size
        bar.update(1)
        if (step + 1) % t.log_interval == 0 or step + 1 == micro_batches:
            flush()
            if env.is_main:
                now = time.time()
                clips_per_s = window_clips / max(now - window_start, 1e-9)
                lr = optimizer.param_groups[0]["lr"]
                avg_loss = totals.loss_sum / max(totals.loss_count, 1)
                bar.set_postfix(iteration=epoch * micro_batches + step + 1, loss=f"{avg_loss:.3f}",
                                lr=f"{lr:.2e}", **{"clips/s": f"{clips_per_s:.1f}"})
                logbook.log("train", epoch * micro_batches + step + 1, loss=avg_loss, lr=lr,
                            clips_per_s=clips_per_s)
                window_start, window_clips = now, 0
        if last_in_group and step + 1 < micro_batches:
            update = epoch * updates_per_epoch + (step + 1) // t.accumulate
            due = t.checkpoint_every_iters > 0 and update % t.checkpoint_every_iters == 0
            stopping = any_rank(stop.requested, env)
            if due or stopping:
                flush()
                totals.time_s += time.time() - start
                start = time.time()
                save_latest(step + 1)
                if stopping:
                    bar.close()
                    return False
    bar.close()
    totals.time_s += time.time() - start
    return True


def validate(model: nn.Module, val_set, cfg: Config, env: DistEnv) -> dict:
    """One clip, center crop per video: fast top-1 for model selection."""
    from snvideo.evaluation import evaluate

    val_cfg = TestConfig(num_clips=1, num_crops=1, views_per_forward=cfg.data.batch_size,
                         average="prob", num_workers=cfg.test.num_workers)
    return evaluate(model, val_set, val_cfg, env=env, device=env.device, progress=False,
                    amp=cfg.train.amp, channels_last=cfg.train.channels_last)


def run_final_test(model: nn.Module, cfg: Config, classes: list[str], env: DistEnv) -> None:
    """The multi-view test of test.py (test.num_clips x test.num_crops views per video)."""
    from snvideo.evaluation import evaluate, format_summary, write_results

    ann = cfg.data.test_ann or cfg.data.val_ann
    test_set = builders.eval_dataset(cfg, ann, cfg.test.num_clips, cfg.test.num_crops,
                                     classes=classes)
    results = evaluate(model, test_set, cfg.test, env=env, device=env.device,
                       amp=cfg.train.amp, channels_last=cfg.train.channels_last)
    if env.is_main:
        print(format_summary(results))
        write_results(results, os.path.join(cfg.work_dir, "test_results.json"))


def report_sn_importance(model: nn.Module, work_dir: str) -> None:
    """Print and save the learned IN/LN/BN importance of every SN layer."""
    from snvideo.analysis.sn_weights import format_table, sn_importance

    rows = sn_importance(unwrap(model).state_dict())
    if not rows:
        return
    print(format_table(rows))
    with open(os.path.join(work_dir, "sn_importance.json"), "w") as f:
        json.dump([{"layer": name, **weights} for name, weights in rows], f, indent=1)


def format_epoch(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    if "val_top1" in record:
        if record["val_top1"] is None:
            parts.append("no readable validation video")
        else:
            parts.append(f"val top1 {record['val_top1']:.2f} top5 {record['val_top5']:.2f}")
    if record["nonfinite_skipped"]:
        parts.append(f"{record['nonfinite_skipped']} non-finite steps skipped")
    if record["unreadable_videos"]:
        parts.append(f"{record['unreadable_videos']} unreadable videos replaced")
    parts.append(f"{record['epoch_time_s']:.0f}s")
    return " | ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
