"""Save every video's pooled backbone features, averaged over the test views.

    python data_tools/extract_features.py --checkpoint CKPT --ann LIST [--root DIR] --out DIR
                                          [--config CFG] [--per-view] [--device cpu] [key=value ...]
    torchrun --nproc_per_node=N data_tools/extract_features.py ...   # videos split over N processes

LIST is any annotation test.py reads (list file, Kinetics CSV, UCF101 / HMDB51 / SSv2, class
folders; data.classes_file / data.split from the config or an override). Each video is decoded
once into test.num_clips x test.num_crops views exactly as test.py does; the input of the
model's classifier (`fc`, the globally pooled features, size D) is taken for every view and
averaged, and saved as DIR/<video name without extension>.npy, shape (D,) float32
(--per-view: (views, D)). The video name is its path relative to the data root, so class
folders are kept. Because the classifier is linear, fc(features) is the mean of the views'
logits: its argmax is the class test.py predicts with test.average=score.

Resumable: videos whose .npy exists are skipped (files are written atomically). Videos that
cannot be decoded, or are listed but missing, are printed and written to DIR/failed.txt
("video<TAB>reason"). Exit status 0 (also with failed videos); 2 for bad arguments or config.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import UsageError, run_main  # noqa: E402

PROG = "extract_features"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Pooled backbone features of every "
                                "video, averaged over test.py's views, one .npy per video.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train.py")
    p.add_argument("--ann", required=True, help="annotation list / folder of the videos")
    p.add_argument("--root", help="video root (default: data.root of the config)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML config (default: the checkpoint's config)")
    p.add_argument("--per-view", action="store_true", help="keep (views, D) instead of the mean")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def feature_path(out_dir: str, video: str) -> str:
    return os.path.join(out_dir, os.path.splitext(video)[0] + ".npy")


def save_array(path: str, array) -> None:
    import numpy as np

    from snvideo.atomic import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def extract(model, dataset, test_cfg, out_dir: str, env, per_view: bool = False) -> dict:
    """Write the features of this process's share of the videos not yet in out_dir.

    Returns {"done", "skipped", "failed": [(video, reason)]} summed over all processes."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from snvideo.data.worker_memory import init_worker
    from snvideo.engine.checkpoint import unwrap
    from snvideo.engine.distributed import all_gather_objects, barrier
    from snvideo.evaluation.evaluator import (_CatchReadErrors, _Failure, _single_item,
                                              predict_views, shard_indices, video_name)

    names = [video_name(dataset, i) for i in range(len(dataset))]
    todo = [i for i, name in enumerate(names) if not os.path.isfile(feature_path(out_dir, name))]
    barrier(env)  # every process has listed what exists before anyone writes
    mine = [todo[j] for j in shard_indices(len(todo), env.rank, env.world_size)]
    net = unwrap(model).eval()
    captured: list = []
    hook = net.fc.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].float().cpu()))
    workers = int(getattr(test_cfg, "num_workers", 0))
    loader = DataLoader(_CatchReadErrors(dataset, mine), batch_size=1, shuffle=False,
                        num_workers=workers, collate_fn=_single_item, worker_init_fn=init_worker,
                        prefetch_factor=2 if workers > 0 else None)
    done, failed = 0, []
    try:
        for item in loader:
            if isinstance(item, _Failure):
                failed.append((names[item.index], item.reason))
                continue
            captured.clear()
            predict_views(net, item.views, test_cfg.views_per_forward, "score", env.device)
            features = torch.cat(captured)  # (views, D)
            array = features if per_view else features.mean(dim=0)
            save_array(feature_path(out_dir, names[item.index]), array.numpy().astype(np.float32))
            done += 1
    finally:
        hook.remove()
    gathered = all_gather_objects((done, failed), env)
    missing = [(str(video), "file not found") for video in getattr(dataset, "missing", [])]
    return {"done": sum(d for d, _ in gathered), "skipped": len(names) - len(todo),
            "failed": sorted(f for _, part in gathered for f in part) + missing}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(None if argv is None else list(argv))
    return run_main(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from snvideo.config import ConfigError, config_for_checkpoint

    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    if not os.path.exists(args.ann):
        raise UsageError(f"--ann not found: {args.ann}")
    from snvideo.engine.builders import eval_dataset, model_from_checkpoint
    from snvideo.engine.checkpoint import load_checkpoint
    from snvideo.engine.distributed import cleanup, init_distributed

    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except Exception as e:  # not a torch file, or objects weights_only refuses
        raise UsageError(f"cannot read checkpoint {args.checkpoint}: {str(e).splitlines()[0]}") from None
    try:
        cfg = config_for_checkpoint(args.config, args.overrides, checkpoint, args.checkpoint)
        if args.root is not None:
            cfg.data.root = args.root
        model = model_from_checkpoint(cfg, checkpoint)
        dataset = eval_dataset(cfg, args.ann, cfg.test.num_clips, cfg.test.num_crops,
                               classes=[str(c) for c in checkpoint.get("classes") or []] or None)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    env = init_distributed(args.device)
    try:
        model.to(env.device)
        summary = extract(model, dataset, cfg.test, args.out, env, per_view=args.per_view)
    finally:
        cleanup(env)
    if env.is_main:
        failed = summary["failed"]
        for video, reason in failed:
            print(f"FAILED {video}: {reason}", file=sys.stderr)
        failed_file = os.path.join(args.out, "failed.txt")
        if failed:
            os.makedirs(args.out, exist_ok=True)
            with open(failed_file, "w") as f:
                f.writelines(f"{video}\t{reason}\n" for video, reason in failed)
        elif os.path.isfile(failed_file):  # an earlier run's failures now all extracted
            os.remove(failed_file)
        print(f"{PROG}: done {summary['done']}, skipped {summary['skipped']}, failed {len(failed)}"
              f" ({cfg.test.num_clips} clips x {cfg.test.num_crops} crops per video) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
