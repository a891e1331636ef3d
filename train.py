"""Train a video classifier.

    python train.py                                    # the demo: configs/demo.yaml, end to end
    python train.py --config configs/i3d_r50_sn_k400_32x2_8pergpu.yaml data.batch_size=4 train.lr=0.005
    torchrun --nproc_per_node=8 train.py --config CFG   # DistributedDataParallel, one process per GPU

Re-running the same command resumes from work_dir/latest.pt; --no-resume starts over.
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
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from snvideo.config import Config, ConfigError, TestConfig, load_config, save_config
from snvideo.engine import builders
from snvideo.engine.checkpoint import (all_finite, load_checkpoint, remove_stale_temporaries,
                                       rng_state, save_checkpoint, set_rng_state, unwrap)
from snvideo.engine.distributed import (DistEnv, all_reduce_sum, barrier, cleanup,
                                        enable_cudnn_benchmark, init_distributed,
                                        set_cpu_threads)
from snvideo.engine.logbook import Logbook
from snvideo.norm import convert_sync_switchnorm, recompute_norm_stats

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.yaml")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: the demo)")
    parser.add_argument("--resume", metavar="PATH", help="resume from this checkpoint")
    parser.add_argument("--no-resume", action="store_true", help="ignore work_dir/latest.pt")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
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
    env = init_distributed(args.device)
    try:
        if cfg.data.demo_dir:
            prepare_demo(cfg, env)
        builders.check_data_paths(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        cleanup(env)
        return 2
    try:
        train(cfg, args, env)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        cleanup(env)
    return 0


def prepare_demo(cfg: Config, env: DistEnv) -> None:
    """Generate the demo dataset into data.demo_dir on first use (rank 0; the others wait)."""
    if env.is_main:
        from snvideo.data.synthetic import make_demo_dataset

        try:
            make_demo_dataset(cfg.data.demo_dir, **cfg.data.demo_kwargs)
        except TypeError as e:
            raise ConfigError(f"data.demo_kwargs: {e}") from None
    barrier(env)


def train(cfg: Config, args: argparse.Namespace, env: DistEnv) -> None:
    t = cfg.train
    set_cpu_threads(env, cfg.data.num_workers)
    enable_cudnn_benchmark(env.device)
    torch.manual_seed(t.seed + env.rank)
    train_set = builders.train_dataset(cfg)
    classes = list(train_set.classes)
    num_classes = cfg.model.num_classes or len(classes)
    val_set = builders.eval_dataset(cfg, cfg.data.val_ann, num_clips=1, num_crops=1,
                                    classes=classes)
    loader = make_train_loader(train_set, cfg, env)
    updates_per_epoch = len(loader) // t.accumulate
    if updates_per_epoch == 0:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} x train.accumulate={t.accumulate} "
                          f"exceeds the {len(train_set)} training videos per process")

    model = builders.model_from_config(cfg.model, num_classes)
    if cfg.model.pretrained2d:
        from snvideo.models import load_pretrained_2d

        load_pretrained_2d(model, cfg.model.pretrained2d)
    if t.sync_norm and env.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(convert_sync_switchnorm(model))
    model.to(env.device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    optimizer = builders.build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, builders.lr_lambda(cfg, updates_per_epoch))
    scaler = torch.amp.GradScaler(env.device.type, enabled=t.amp == "fp16")

    start_epoch, best_top1 = 0, 0.0
    if env.is_main:
        remove_stale_temporaries(cfg.work_dir)
    resume_path = args.resume or os.path.join(cfg.work_dir, "latest.pt")
    if (args.resume or not args.no_resume) and os.path.isfile(resume_path):
        ckpt = load_checkpoint(resume_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best_top1 = ckpt["epoch"], ckpt.get("best_top1", 0.0)
        if env.is_main:
            print(f"resuming from {resume_path} at epoch {start_epoch}")

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
    for epoch in range(start_epoch, t.epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        torch.manual_seed(t.seed * 1_000_003 + epoch * 1009 + env.rank)
        train_set.reset_failures()
        stats = train_one_epoch(run_model, ddp, loader, optimizer, scheduler, scaler, cfg, env,
                                epoch, logbook)
        failed = int(all_reduce_sum([train_set.num_failed], env)[0])
        if t.sn_batch_average:
            recompute_norm_stats(model, loader, t.sn_batch_average_batches)
        record = {"epoch": epoch + 1, **stats, "unreadable_videos": failed}
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
        if env.is_main:
            state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "epoch": epoch + 1, "config": cfg.to_dict(), "classes": classes,
                     "rng": rng_state(), "best_top1": best_top1}
            save_checkpoint(state, os.path.join(cfg.work_dir, f"epoch_{epoch + 1}.pt"))
            save_checkpoint(state, os.path.join(cfg.work_dir, "latest.pt"))
            if record.get("val_top1") == best_top1:
                save_checkpoint(state, os.path.join(cfg.work_dir, "best.pt"))
        barrier(env)
    logbook.close()
    if env.is_main:
        report_sn_importance(model, cfg.work_dir)
    if cfg.test.after_train:
        run_final_test(model, cfg, classes, env)


def make_train_loader(dataset, cfg: Config, env: DistEnv) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                 shuffle=True, seed=cfg.train.seed, drop_last=True) \
        if env.distributed else None
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=sampler is None,
                      sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=env.device.type == "cuda", persistent_workers=workers > 0)


def train_one_epoch(model: nn.Module, ddp, loader: DataLoader, optimizer, scheduler, scaler,
                    cfg: Config, env: DistEnv, epoch: int, logbook: Logbook) -> dict:
    """One pass over the training set: forward, backward, an update every `accumulate` batches."""
    t = cfg.train
    model.train()
    micro_batches = len(loader) // t.accumulate * t.accumulate
    autocast = torch.autocast(env.device.type, dtype=AMP_DTYPES[t.amp]) if t.amp != "off" \
        else contextlib.nullcontext()
    bar = tqdm(total=micro_batches, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not env.is_main,
               dynamic_ncols=True, leave=False)
    loss_sum, loss_count, skipped, consecutive_skips = 0.0, 0, 0, 0
    group_ok = True  # the last micro-batch of an accumulation group passed the finite check
    start, window_start, window_clips = time.time(), time.time(), 0
    for step, (clips, labels) in enumerate(loader):
        if step >= micro_batches:
            break
        clips = clips.to(env.device, non_blocking=True)
        if t.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        labels = labels.to(env.device, non_blocking=True)
        last_in_group = (step + 1) % t.accumulate == 0
        no_sync = ddp.no_sync() if ddp is not None and not last_in_group else contextlib.nullcontext()
        with no_sync:
            with autocast:
                loss = F.cross_entropy(model(clips).float(), labels)
            # Every process must agree to skip, or DDP's gradient all-reduce would hang.
            finite = all_reduce_sum([float(not torch.isfinite(loss))], env)[0] == 0
            if finite:
                scaler.scale(loss / t.accumulate).backward()
        if finite:
            consecutive_skips = 0
            loss_sum += loss.item()
            loss_count += 1
        else:
            skipped += 1
            consecutive_skips += 1
            if consecutive_skips >= t.max_nonfinite:
                raise NonFiniteLossError(
                    f"{consecutive_skips} non-finite losses in a row, the last at iteration "
                    f"{epoch * micro_batches + step + 1} (epoch {epoch + 1}, batch {step + 1})")
        group_ok = finite
        if last_in_group:
            if group_ok:  # the group's gradients were all-reduced by this backward
                scaler.unscale_(optimizer)
                if t.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        window_clips += clips.shape[0] * env.world_size
        bar.update(1)
        if env.is_main and ((step + 1) % t.log_interval == 0 or step + 1 == micro_batches):
            now = time.time()
            clips_per_s = window_clips / max(now - window_start, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            avg_loss = loss_sum / max(loss_count, 1)
            bar.set_postfix(loss=f"{avg_loss:.3f}", lr=f"{lr:.2e}", clips_s=f"{clips_per_s:.1f}")
            logbook.log("train", epoch * micro_batches + step + 1, loss=avg_loss, lr=lr,
                        clips_per_s=clips_per_s)
            window_start, window_clips = now, 0
    bar.close()
    totals = all_reduce_sum([loss_sum, loss_count, skipped], env)
    return {"train_loss": totals[0] / max(totals[1], 1), "nonfinite_skipped": int(totals[2]),
            "epoch_time_s": round(time.time() - start, 1)}


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
