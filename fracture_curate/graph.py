"""Grouping rows into connected components of matched pairs (union-find, vectorised)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def chain_pairs(keys: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(first, other)`` linking every row to the first row with the same key.

    Null keys link nothing.
    """
    valid = keys.notna().to_numpy()
    positions = np.flatnonzero(valid)
    codes = pd.factorize(keys[valid])[0]
    first = pd.Series(positions).groupby(codes).transform("first").to_numpy()
    linked = first != positions
    return first[linked], positions[linked]


def connected_groups(n: int, left: np.ndarray, right: np.ndarray) -> tuple[int, np.ndarray]:
    """The number of components and each of ``n`` nodes' component, given edges."""
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)
