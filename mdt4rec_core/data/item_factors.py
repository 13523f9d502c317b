"""Item vectors factorised from the training logs: what the logged ratings say about how items relate.

Alternating least squares on the observed (user, item, feedback) triples, L2-regularised in proportion to each row's
count, not centred: an item's vector carries the level of its predicted ratings as well as their pattern, and the
level is what a user's reward is. The item factors are then mapped so that Euclidean distances between item vectors
equal the root-mean-square difference of the two items' predicted ratings over the training users: the geometry a
recommender needs to tell items that users rate alike from items they rate differently. Only the training logs are
read: never a simulator's ground truth.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _solve_rows(indicator: sp.csr_matrix, ratings: sp.csr_matrix, other: np.ndarray, regularisation: float):
    """Least-squares factors of every row of ``ratings`` (R, C) given the column factors ``other`` (C, d):
    (sum_c q_c q_c^T + reg * n_r * I)^-1 sum_c r_rc q_c per row r; rows without observations get zeros."""
    d = other.shape[1]
    upper = np.triu_indices(d)
    outer = other[:, upper[0]] * other[:, upper[1]]  # (C, d(d+1)/2): the Gram matrices are symmetric
    gram = np.empty((indicator.shape[0], d, d))
    gram[:, upper[0], upper[1]] = indicator @ outer
    gram[:, upper[1], upper[0]] = gram[:, upper[0], upper[1]]
    counts = np.asarray(indicator.sum(axis=1)).ravel()
    gram += (regularisation * np.maximum(counts, 1))[:, None, None] * np.eye(d)
    rhs = np.asarray(ratings @ other)
    return np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]


def factorise_items(
    users: np.ndarray,
    items: np.ndarray,
    feedback: np.ndarray,
    n_items: int,
    dim: int,
    iterations: int = 12,
    regularisation: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """(n_items, dim) float32 item vectors from observed triples: ``users`` (n,) any ids, ``items`` (n,) catalogue
    indices, ``feedback`` (n,) raw. Items never observed get the zero vector. Distances between rows approximate the
    RMS difference of the items' predicted ratings over the users; the vectors are scaled to unit RMS norm."""
    _, user_index = np.unique(users, return_inverse=True)
    n_users = int(user_index.max()) + 1 if len(user_index) else 0
    if n_users == 0 or dim == 0:
        return np.zeros((n_items, dim), dtype=np.float32)
    shape = (n_users, n_items)
    ratings = sp.csr_matrix((feedback.astype(np.float64), (user_index, items)), shape=shape)
    indicator = sp.csr_matrix((np.ones(len(items)), (user_index, items)), shape=shape)
    rng = np.random.default_rng(seed)
    item_factors = rng.normal(0.0, 0.1, (n_items, dim))
    by_item = indicator.T.tocsr(), ratings.T.tocsr()
    for _ in range(iterations):
        user_factors = _solve_rows(indicator, ratings, item_factors, regularisation)
        item_factors = _solve_rows(*by_item, user_factors, regularisation)
    # ||P q_i - P q_j||^2 / U = (q_i - q_j)^T (P^T P / U) (q_i - q_j): map q -> L^T q with L L^T = P^T P / U.
    metric = user_factors.T @ user_factors / n_users + 1e-9 * np.eye(dim)
    vectors = item_factors @ np.linalg.cholesky(metric)
    scale = np.sqrt((vectors**2).sum(axis=1).mean()) or 1.0
    return (vectors / scale).astype(np.float32)
