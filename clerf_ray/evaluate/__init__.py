"""Evaluation: metrics (:mod:`~clerf_ray.evaluate.metrics`), test sets and their SA / FA variants
(:mod:`~clerf_ray.evaluate.test_sets`), and the ``clerf evaluate`` report
(:mod:`~clerf_ray.evaluate.report`). The names below are the public API.

    report = run_evaluation(["clerf-head@candidate", "clerf-baseline@candidate"], "synthetic",
                            out="eval_out")
"""

from clerf_ray.evaluate.metrics import evaluate_model, predict, summarize
from clerf_ray.evaluate.report import (
    TABLE_COLUMNS,
    EvaluationReport,
    markdown_table,
    run_evaluation,
    slug,
    turn_space,
    write_csv,
)
from clerf_ray.evaluate.test_sets import (
    AFLW_LIMIT_DEG,
    DEFAULT_IDENTITIES,
    DEFAULT_RENDERER,
    VARIANTS,
    EvalSet,
    RenderSettings,
    aflw_protocol_mask,
    heldout_renders,
    load_parquet_set,
    make_variant,
    recorded_render_settings,
    resolve_render_settings,
    synthetic_set,
)

__all__ = [
    "AFLW_LIMIT_DEG",
    "DEFAULT_IDENTITIES",
    "DEFAULT_RENDERER",
    "TABLE_COLUMNS",
    "VARIANTS",
    "EvalSet",
    "EvaluationReport",
    "RenderSettings",
    "aflw_protocol_mask",
    "evaluate_model",
    "heldout_renders",
    "load_parquet_set",
    "make_variant",
    "markdown_table",
    "predict",
    "recorded_render_settings",
    "resolve_render_settings",
    "run_evaluation",
    "slug",
    "summarize",
    "synthetic_set",
    "turn_space",
    "write_csv",
]
