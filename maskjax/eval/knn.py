"""k-nearest-neighbour classification on frozen features (cosine similarity, weighted votes).

The DINO/InstDisc protocol: L2-normalised features, the k = 20 most similar training
features vote for their class with weight ``exp(similarity / T)``, T = 0.07. It needs one
forward pass over each split and no training, so it is cheap enough to run every few epochs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.progress import progress


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, *,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
    """Predicted class of each test feature [N_test] by temperature-weighted kNN votes."""
    k = min(k, len(train_x))
    normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    bank = normalize(jnp.asarray(train_x, jnp.float32))
    labels = jnp.asarray(train_y, jnp.int32)

    @jax.jit
    def predict(queries):
        sims = normalize(queries) @ bank.T                       # [q, N_train]
        top_sims, top_idx = jax.lax.top_k(sims, k)               # [q, k]
        weights = jnp.exp(top_sims / temperature)
        votes = jax.nn.one_hot(labels[top_idx], num_classes) * weights[..., None]
        return jnp.argmax(votes.sum(axis=1), axis=-1)

    out = []
    with progress(total=len(test_x), desc="kNN search", unit="query") as bar:
        for i in range(0, len(test_x), chunk):
            out.append(np.asarray(predict(jnp.asarray(test_x[i:i + chunk], jnp.float32))))
            bar.update(len(out[-1]))  # np.asarray already waited for the chunk
    return np.concatenate(out)


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy of :func:`knn_classify`."""
    pred = knn_classify(train_x, train_y, test_x, num_classes, k=k, temperature=temperature)
    return float(np.mean(pred == np.asarray(test_y)))
