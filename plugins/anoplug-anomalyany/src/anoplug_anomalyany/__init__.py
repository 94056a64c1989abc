"""AnomalyAny (CVPR 2025): training-free unseen anomalies from one normal image and a prompt.

The method is :class:`anoplug_anomalyany.anomalyany.AnomalyAny`; its steps live in
:mod:`.prompts`, :mod:`.schedule`, :mod:`.guidance`, :mod:`.attention_maps`, :mod:`.clip_loss`
and :mod:`.masks`.
"""
