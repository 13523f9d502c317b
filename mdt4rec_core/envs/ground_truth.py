"""The "ground-truth" reward matrix of a data-driven environment: matrix factorisation of the logged feedback.

EasyRL4Rec's recipe for MovieLens-1M: 6 factors, no biases, MSE, SGD with learning rate 0.1 and momentum 0.9, batch
128, 80 epochs, trained on a random 90 % of the ratings (seed 42); predictions clipped to [0, 5]. Mini-batch SGD is
sequential by nature; each step here is a handful of tensor operations with hand-written gradients (no autograd), so
the 80 epochs over 900k ratings take about a minute on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mdt4rec_core.config import FactorisationConfig


@dataclass(frozen=True)
class Factorisation:
    """``users`` (U, k) and ``items`` (I, k) factors; ``train_mask`` (N,) marks the ratings they were fitted on."""

    users: torch.Tensor
    items: torch.Tensor
    train_mask: np.ndarray
    train_mse: float
    held_out_mse: float

    def matrix(self, clip_min: float, clip_max: float) -> np.ndarray:
        """(U, I) float32 predicted rewards, clipped."""
        return (self.users @ self.items.T).clamp_(clip_min, clip_max).numpy().astype(np.float32, copy=False)


def factorise(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int, config: FactorisationConfig
) -> Factorisation:
    """Fit ``rating[n] ~ <P[users[n]], Q[items[n]]>`` by mini-batch SGD with momentum on the MSE.

    ``users``/``items``: (N,) int indices; ``ratings``: (N,) float. A random ``train_fraction`` of the N ratings (drawn
    with ``config.seed``) is used for fitting; the rest gives ``held_out_mse``.
    """
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float32)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    train_mask = rng.random(len(ratings)) < config.train_fraction
    u = torch.as_tensor(users[train_mask], dtype=torch.long)
    i = torch.as_tensor(items[train_mask], dtype=torch.long)
    r = torch.as_tensor(ratings[train_mask], dtype=torch.float32)
    p = torch.randn(n_users, config.factors, generator=generator) * config.init_std
    q = torch.randn(n_items, config.factors, generator=generator) * config.init_std
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only add synchronisation (15x slower on 2 cores)
    try:
        _sgd_epochs(u, i, r, p, q, config, generator)
    finally:
        torch.set_num_threads(threads)
    return Factorisation(
        p, q, train_mask, _mse(p, q, users, items, ratings, train_mask), _mse(p, q, users, items, ratings, ~train_mask)
    )


def _sgd_epochs(u, i, r, p, q, config: FactorisationConfig, generator: torch.Generator) -> None:
    """Update ``p`` and ``q`` in place."""
    p_velocity, q_velocity = torch.zeros_like(p), torch.zeros_like(q)
    p_grad, q_grad = torch.zeros_like(p), torch.zeros_like(q)
    n = len(r)
    with torch.no_grad():
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, config.batch_size):
                batch = order[start : start + config.batch_size]
                bu, bi, br = u[batch], i[batch], r[batch]
                pu, qi = p[bu], q[bi]
                # d/dP of mean((<P_u, Q_i> - r)^2) = 2 (pred - r) Q_i / B, accumulated per row.
                error = ((pu * qi).sum(1) - br).mul_(2.0 / len(batch)).unsqueeze(1)
                p_grad.zero_().index_add_(0, bu, error * qi)
                q_grad.zero_().index_add_(0, bi, error * pu)
                p_velocity.mul_(config.momentum).add_(p_grad)
                q_velocity.mul_(config.momentum).add_(q_grad)
                p.sub_(config.learning_rate * p_velocity)
                q.sub_(config.learning_rate * q_velocity)


def _mse(p, q, users, items, ratings, mask) -> float:
    if not mask.any():
        return float("nan")
    pred = (p[torch.as_tensor(users[mask])] * q[torch.as_tensor(items[mask])]).sum(1)
    return float(((pred - torch.as_tensor(ratings[mask], dtype=torch.float32)) ** 2).mean())
