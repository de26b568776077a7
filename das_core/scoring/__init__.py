"""From embeddings to labels: the drift cache, prompt text, the one scorer, metrics and baselines.

cache (DriftCache), prompts (label text, templates, noise phrases), scorer (DAS and zero-shot scores,
top-k, pooling over windows), metrics (accuracy, mAP), baselines (Acevedo et al.), build (das build-cache's
library side).
"""
