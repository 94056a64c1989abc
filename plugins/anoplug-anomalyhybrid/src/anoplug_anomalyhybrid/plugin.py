"""Entry point: registers AnomalyHybrid (local and global inference) without importing torch."""

from __future__ import annotations

from anoplug import GeneratorSpec, hookimpl


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [
        GeneratorSpec("anomalyhybrid", "anoplug_anomalyhybrid.anomalyhybrid:AnomalyHybrid",
                      title="AnomalyHybrid: reference appearance on target depth and edges (two decoders)",
                      category="multimodal-image-depth", tags=("gan", "mask"), needs_fit=True),
        GeneratorSpec("anomalyhybrid-global", "anoplug_anomalyhybrid.anomalyhybrid:AnomalyHybridGlobal",
                      title="AnomalyHybrid (global): reference appearance on the target's depth and edges",
                      category="multimodal-image-depth", tags=("gan", "mask"), needs_fit=True),
    ]
