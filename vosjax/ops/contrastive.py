"""The NT-Xent (normalised temperature-scaled cross-entropy) metric-learning loss of SHLS.

SHLS trains its superfeatures with pytorch-metric-learning's `NTXentLoss(temperature=0.07)`,
every superpixel labelled with its majority pseudo-label. `nt_xent` computes that loss over
all pairs of a set of embeddings (the reference drew random triplet indices per anchor; all
pairs is the deterministic full version). It is pure, jittable and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vosjax.ops import affinity


@jax.jit
def nt_xent(
    embeddings: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    temperature: float | jax.Array = 0.07,
) -> jax.Array:
    """NT-Xent over all pairs, as pytorch-metric-learning's NTXentLoss with no miner.

    With x_i = embeddings[i] / |embeddings[i]| and s_ij = x_i . x_j / temperature, every
    positive pair (a, p) (a != p, labels[a] == labels[p], both valid) has the loss

        l_ap = -log(exp(s_ap) / (exp(s_ap) + sum_n exp(s_an)))

    where n runs over the valid entries with labels[n] != labels[a]. It is computed as
    softplus(logsumexp_n(s_an) - s_ap), the log-sum-exp shifted by each anchor's largest
    negative similarity, so that no exponential overflows whatever the temperature. The loss is
    the mean of l_ap over all (ordered) positive pairs, and 0 when there is none. An anchor with
    no negative gives l_ap = 0, as in the reference. (The reference also adds 1.2e-38 inside
    the log, which only matters when l_ap > 87; here l_ap is exact.)

    Args:
      embeddings: [N, D], any float dtype (normalised here).
      labels: int [N], class of each embedding.
      valid: bool [N], False for padding entries, which take no part in any pair; None for
        all valid.
      temperature: > 0, a Python number or a traced scalar.

    Returns:
      float32 scalar.

    Raises:
      ValueError: naming `embeddings`, `labels` or `valid` on a bad shape.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings: expected [N, D], got shape {embeddings.shape}")
    num = embeddings.shape[0]
    if labels.shape != (num,):
        raise ValueError(f"labels: expected shape [N] = ({num},), got {labels.shape}")
    if valid is None:
        valid = jnp.ones((num,), bool)
    if valid.shape != (num,):
        raise ValueError(f"valid: expected shape [N] = ({num},), got {valid.shape}")
    x = affinity.l2_normalize(embeddings)
    sim = jnp.matmul(x, x.T, precision=lax.Precision.HIGHEST) / temperature  # [N, N]
    pair_valid = valid[:, None] & valid[None, :]
    same = labels[:, None] == labels[None, :]
    positive = same & pair_valid & ~jnp.eye(num, dtype=bool)
    negative = ~same & pair_valid

    has_negative = jnp.any(negative, axis=1)
    shift = lax.stop_gradient(
        jnp.where(has_negative, jnp.max(jnp.where(negative, sim, -jnp.inf), axis=1), 0.0)
    )
    # exp of -inf (not a masked exp) so that masked entries give exact zeros and zero gradients.
    neg_sum = jnp.sum(jnp.exp(jnp.where(negative, sim - shift[:, None], -jnp.inf)), axis=1)
    log_neg = jnp.where(
        has_negative, jnp.log(jnp.where(has_negative, neg_sum, 1.0)) + shift, -jnp.inf
    )
    pair_loss = jax.nn.softplus(log_neg[:, None] - sim)  # [anchor, positive]
    num_positive = jnp.sum(positive)
    total = jnp.sum(jnp.where(positive, pair_loss, 0.0))
    return total / jnp.maximum(num_positive, 1).astype(jnp.float32)
