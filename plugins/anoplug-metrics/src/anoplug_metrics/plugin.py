"""Entry point of ``anoplug-metrics``: registers the evaluators; imports nothing heavy."""

from anoplug import EvaluatorSpec, hookimpl


@hookimpl
def anoplug_evaluators() -> list[EvaluatorSpec]:
    return [
        EvaluatorSpec("mask-precision", "anoplug_metrics.mask_precision:MaskPrecision",
                      title="Mask precision: leakage, coverage, boundary alignment", kind="per_sample"),
        EvaluatorSpec("ic-lpips", "anoplug_metrics.diversity:ICLPIPS", title="IC-LPIPS diversity (AnomalyDiffusion variant)",
                      kind="set"),
        EvaluatorSpec("kid", "anoplug_metrics.fidelity:KID", title="KID fidelity over a named extractor", kind="set"),
        EvaluatorSpec("inception-score", "anoplug_metrics.fidelity:InceptionScore",
                      title="Inception Score (user-supplied Inception only)", kind="set"),
        EvaluatorSpec("downstream-utility", "anoplug_metrics.utility:DownstreamUtility",
                      title="Downstream utility: DRAEM U-Net trained on the anomalies, tested on real defects",
                      kind="downstream"),
    ]
