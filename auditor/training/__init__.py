"""The audit model: architectures (models), one training run with its per-example dynamics (trainer), the scores read
from them (dynamics_scores, score_rows), convergence, embedders and the embeddings tables (docs/layout.md)."""
