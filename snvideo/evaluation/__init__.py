"""Multi-view (clips x crops) testing: the evaluator, its metrics and its result files.

    results = evaluate(model, eval_dataset(cfg, ann, n_clips, n_crops), cfg.test, env)
    print(format_summary(results)); write_results(results, "results.json")
"""
from .evaluator import (EvaluationError, evaluate, predict_video, predict_views, shard_indices,
                        video_name)
from .metrics import accuracy_metrics, aggregate_views, top_k
from .report import build_results, format_summary, write_results

__all__ = [
    "EvaluationError", "accuracy_metrics", "aggregate_views", "build_results", "evaluate",
    "format_summary", "predict_video", "predict_views", "shard_indices", "top_k", "video_name",
    "write_results",
]
