"""Multi-view test of a trained checkpoint, or top-5 classes of one video.

    python test.py --checkpoint work_dirs/x/best.pth [--config CFG] [key=value ...]
                   [--out results.json|results.csv] [--strict]
    torchrun --nproc_per_node=N test.py --checkpoint ... # videos split over N processes
    python test.py --checkpoint CKPT --video clip.mp4    # single video, top-5 classes
    python test.py --checkpoint CKPT --video clip.mp4 --out-video top5.mp4   # ... drawn on it
    python test.py --checkpoint CKPT --video long.mp4 --timeline tl.json [--window-stride 1.0]
                   [--timeline-plot tl.png] [--out-video tl.mp4]  # top-5 of a sliding window
    python test.py --checkpoint CKPT --out results.json --confusion confusion.png
    python test.py --checkpoint CKPT --recompute-norm-stats 200  # precise BN, then the test
    python test.py --checkpoint CKPT --fold   # one-hot SN/SSN layers as plain (BN: in the conv)

--config is optional: without it the config saved in the checkpoint is used; dotted
overrides apply on top of either (e.g. test.num_clips=4 test.num_crops=1 data.root=/data/k400).
The test list is data.test_ann (default data.val_ann). Class names come from the checkpoint,
else from label_map.txt beside it. The model runs under the config's train.amp autocast and
train.channels_last memory format (override with train.amp=off etc.).

Exit status: 0 done; 1 a video failed with --strict, or --video could not be decoded;
2 bad arguments, config, or a missing checkpoint / config / annotation / video file.
"""
from __future__ import annotations

import argparse
import os
import sys

from snvideo.config import Config, ConfigError, config_for_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py")
    parser.add_argument("--config", help="YAML config (default: the checkpoint's config)")
    parser.add_argument("--out", help="write per-video results to .json or .csv")
    parser.add_argument("--strict", action="store_true",
                        help="stop with exit status 1 at the first video that fails to decode")
    parser.add_argument("--video", help="classify this one video and print its top-5 classes")
    parser.add_argument("--out-video", help="with --video: write it with the top-5 drawn on "
                        "its frames (.mp4 or .gif)")
    parser.add_argument("--timeline", help="with --video: top-5 classes of a sliding window over "
                        "the whole video, to this JSON file (streamed: any length)")
    parser.add_argument("--window-stride", type=float, default=None, metavar="SECONDS",
                        help="seconds between window starts (default: one window span)")
    parser.add_argument("--timeline-plot", help="with --timeline: class probability over time "
                        "(.png, .pdf, .svg; needs matplotlib)")
    parser.add_argument("--timeline-batch", type=int, default=8, help="windows per forward")
    parser.add_argument("--confusion", help="draw the confusion matrix to this image (.png, "
                        ".pdf, .svg; needs matplotlib)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--recompute-norm-stats", type=int, default=0, metavar="N",
                        help="before testing, recompute the BN / SN running statistics as the "
                        "average over N training batches of data.batch_size clips (precise BN; "
                        "SN's batch average)")
    parser.add_argument("--fold", action="store_true",
                        help="test the model with its one-hot SN / SSN layers replaced by the "
                        "plain layer each chose (BN folded into the conv before it); prints "
                        "which layers stayed SN and why (snvideo.norm.fold_for_inference)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. test.num_clips=4")
    return parser.parse_intermixed_args(argv)


def fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def place_model(model, cfg: Config, device) -> None:
    """Move the model to `device` in the training's memory format; cuDNN autotuning on CUDA.
    (The test runs under the training's autocast dtype too: train.amp, passed to evaluate.)"""
    import torch

    from snvideo.engine.distributed import enable_cudnn_benchmark

    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    enable_cudnn_benchmark(device)


def run_video(args: argparse.Namespace, cfg: Config, model, names: list[str]) -> int:
    import torch

    from snvideo.data import VideoReadError
    from snvideo.evaluation import predict_video, top_k

    if "://" not in args.video and not os.path.isfile(args.video):  # URLs go to FFmpeg as they are
        return fail(f"video not found: {args.video}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    place_model(model, cfg, device)
    if args.timeline:
        return run_timeline(args, cfg, model, names, device)
    try:
        probs = predict_video(model, args.video, cfg.test, cfg.data, device,
                              amp=cfg.train.amp, channels_last=cfg.train.channels_last)
    except VideoReadError as e:
        return fail(str(e), 1)  # "cannot read video PATH: reason"
    t = cfg.test
    print(f"{args.video} ({t.num_clips} clips x {t.num_crops} crops, {t.average} averaging):")
    top_names, top_probs = [], []
    for rank, (index, prob) in enumerate(zip(*top_k(probs, 5)), start=1):
        name = names[index] if index < len(names) else str(index)
        print(f"  {rank}. {name:<30} {prob:.4f}")
        top_names.append(name)
        top_probs.append(prob)
    if args.out_video:
        from snvideo.analysis.overlay import overlay_lines, write_overlay_video

        try:
            count = write_overlay_video(args.video, args.out_video,
                                        overlay_lines(top_names, top_probs), backend=cfg.data.backend,
                                        rotation=cfg.data.rotation)
        except VideoReadError as e:
            return fail(str(e), 1)
        print(f"{count} frames with the top-5 written to {args.out_video}")
    return 0


def run_timeline(args: argparse.Namespace, cfg: Config, model, names: list[str], device) -> int:
    """--timeline: a window every --window-stride seconds over the whole video, streamed."""
    import json

    from snvideo.atomic import atomic_write_text
    from snvideo.data import VideoReadError
    from snvideo.evaluation.timeline import TimelineStats, plot_timeline, stream_windows, timeline_json

    d = cfg.data
    if args.window_stride is not None and not args.window_stride > 0:
        return fail(f"--window-stride must be > 0, got {args.window_stride}")
    if args.timeline_batch < 1:
        return fail(f"--timeline-batch must be >= 1, got {args.timeline_batch}")
    model.eval()
    stats = TimelineStats()
    try:
        windows = list(stream_windows(model, args.video, d.clip_len, d.frame_interval,
                                      d.short_side, d.crop_size, args.window_stride,
                                      args.timeline_batch, device, d.rotation, stats))
    except VideoReadError as e:
        return fail(str(e), 1)
    if not windows:
        return fail(f"cannot read video {args.video}: no frames", 1)
    result = timeline_json(windows, names)
    atomic_write_text(args.timeline, json.dumps(result, indent=1) + "\n")
    print(f"{len(windows)} windows of {d.clip_len}x{d.frame_interval} frames over "
          f"{windows[-1].end:.1f} s ({stats.frames_decoded} frames decoded, at most "
          f"{stats.max_frames_held} held) -> {args.timeline}")
    for w in result["windows"][:3] + ([{"start": "...", "end": "...", "top5": [["...", 0]]}]
                                      if len(windows) > 6 else []) + result["windows"][3:][-3:]:
        print(f"  {w['start']}-{w['end']} s: {w['top5'][0][0]}")
    if args.timeline_plot:
        plot_timeline(windows, names, args.timeline_plot)
        print(f"timeline plot written to {args.timeline_plot}")
    if args.out_video:
        from snvideo.analysis.overlay import overlay_lines, write_overlay_video

        def lines_at(seconds: float) -> list[str]:
            current = next((w for w in reversed(result["windows"]) if w["start"] <= seconds),
                           result["windows"][0])
            return overlay_lines([c for c, _ in current["top5"]], [p for _, p in current["top5"]])

        try:
            count = write_overlay_video(args.video, args.out_video, lines_at,
                                        backend=d.backend, rotation=d.rotation)
        except VideoReadError as e:
            return fail(str(e), 1)
        print(f"{count} frames with the current window's top-5 written to {args.out_video}")
    return 0


def recompute_stats(model, cfg: Config, device, num_batches: int) -> None:
    """Precise BN / SN batch average over training batches, in a fixed (train.seed) order."""
    import torch
    from torch.utils.data import DataLoader

    from snvideo.data.datasets import collate_clips
    from snvideo.data.worker_memory import init_worker
    from snvideo.engine.batches import model_inputs
    from snvideo.engine.builders import train_dataset
    from snvideo.norm import recompute_norm_stats

    if not cfg.data.train_ann or not os.path.exists(cfg.data.train_ann):
        raise ConfigError(f"--recompute-norm-stats reads data.train_ann: not found: "
                          f"{cfg.data.train_ann or '(not set)'}")
    dataset = train_dataset(cfg)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, collate_fn=collate_clips,
                        worker_init_fn=init_worker, generator=torch.Generator().manual_seed(cfg.train.seed))
    used = recompute_norm_stats(model, model_inputs(loader, device, dataset.transform,
                                                    cfg.train.channels_last), num_batches)
    print(f"norm statistics recomputed over {used} batches of {cfg.data.batch_size} clips "
          f"from {cfg.data.train_ann}")


def run_dataset(args: argparse.Namespace, cfg: Config, model, names: list[str]) -> int:
    from snvideo.engine.builders import check_data_paths, eval_dataset
    from snvideo.engine.distributed import cleanup, init_distributed
    from snvideo.evaluation import EvaluationError, evaluate, format_summary, write_results

    check_data_paths(cfg, need_train=False)
    ann_file = cfg.data.test_ann or cfg.data.val_ann
    env = init_distributed(args.device)
    try:
        try:
            dataset = eval_dataset(cfg, ann_file, cfg.test.num_clips, cfg.test.num_crops,
                                   classes=names or None)
        except ValueError as e:  # unreadable annotation list, or labels the model does not know
            return fail(str(e).splitlines()[0])
        place_model(model, cfg, env.device)
        if args.recompute_norm_stats:
            recompute_stats(model, cfg, env.device, args.recompute_norm_stats)
        try:
            results = evaluate(model, dataset, cfg.test, env, strict=args.strict,
                               amp=cfg.train.amp, channels_last=cfg.train.channels_last)
        except EvaluationError as e:
            return fail(f"{e.video} failed to decode (--strict): {e.reason}", 1) \
                if env.is_main else 1
        if env.is_main:
            if args.out:
                write_results(results, args.out)
            print(format_summary(results, args.out))
            if args.out:
                print(f"results written to {args.out}")
            if args.confusion:
                from snvideo.analysis.confusion import plot_confusion

                plot_confusion(results["confusion"], [c["class"] for c in results["per_class"]],
                               args.confusion)
                print(f"confusion matrix drawn to {args.confusion}")
        return 0
    finally:
        cleanup(env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out and os.path.splitext(args.out)[1].lower() not in (".json", ".csv"):
        return fail(f"--out must end in .json or .csv, got {args.out}")
    if args.out_video and (not args.video or os.path.splitext(args.out_video)[1].lower()
                           not in (".mp4", ".gif")):
        return fail(f"--out-video needs --video and must end in .mp4 or .gif, got {args.out_video}")
    if args.confusion:
        if args.video or os.path.splitext(args.confusion)[1].lower() not in (".png", ".pdf", ".svg"):
            return fail(f"--confusion is for a dataset run and must end in .png, .pdf or .svg, "
                        f"got {args.confusion}")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return fail("--confusion needs matplotlib: pip install matplotlib")
    if args.recompute_norm_stats < 0 or (args.recompute_norm_stats and args.video):
        return fail("--recompute-norm-stats needs a positive batch count and a dataset run, "
                    f"got {args.recompute_norm_stats}" + (" with --video" if args.video else ""))
    if not os.path.isfile(args.checkpoint):
        return fail(f"checkpoint not found: {args.checkpoint}")
    if args.video and int(os.environ.get("RANK", "0")) != 0:
        return 0  # single-video inference is one process's job
    from snvideo.engine.builders import class_names, model_from_checkpoint
    from snvideo.engine.checkpoint import load_checkpoint

    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except Exception as e:  # not a torch file, or objects weights_only refuses
        return fail(f"cannot read checkpoint {args.checkpoint}: {str(e).splitlines()[0]}")
    try:
        cfg = config_for_checkpoint(args.config, args.overrides, checkpoint, args.checkpoint)
        names = class_names(checkpoint, args.checkpoint)
        model = model_from_checkpoint(cfg, checkpoint, names)
        if args.fold:
            import torch

            from snvideo.norm import fold_for_inference

            if args.recompute_norm_stats:
                return fail("--fold uses the checkpoint's running statistics: it does not go "
                            "with --recompute-norm-stats")
            d = cfg.data
            model, report = fold_for_inference(
                model, probe=torch.randn(1, 3, d.clip_len, d.crop_size, d.crop_size))
            print(report)
        if args.video:
            return run_video(args, cfg, model, names)
        return run_dataset(args, cfg, model, names)
    except ConfigError as e:
        return fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
