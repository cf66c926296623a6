"""A converged, regularised linear probe: multinomial logistic regression on standardised features.

The quick start's probe used to run 500 Adam steps of softmax regression. That underfits, and it
underfits some features more than others: the cls features of a random-init ViT are nearly
collinear (badly conditioned), so a fixed-step first-order probe scores them lower than a probe
fitted to the optimum would, and the printed pre-trained margin was largely the probe's (issue 25,
finding 11). This module fits the probe to convergence instead, so its result is a property of the
features rather than of the optimiser:

- features are standardised with the training examples' mean and variance (never the test set's);
- the objective is the mean cross-entropy plus ``l2 / 2 * |W|^2`` (the bias is not penalised);
- ``l2`` is picked from a small grid by the accuracy on a held-out part of the *training*
  examples, then the probe is refitted on all training examples with that ``l2``;
- every fit is full-batch L-BFGS (optax) in float64, inside one jitted ``while_loop`` that stops
  when the preconditioned gradient norm falls below ``tol`` (or after ``max_iter`` iterations,
  which is reported as not converged).

The L-BFGS runs on ``U`` with ``W = P U``, ``P = V (c Lambda + l2)^(-1/2)`` from the eigen-
decomposition ``V Lambda V^T`` of the feature covariance. The objective is the same function of
``W``; only the optimiser's coordinates change, in which the Hessian is close to the identity
(``c`` ~ the softmax curvature), so a fit takes tens of iterations instead of thousands on
collinear features. On 10,000 x 96 features the whole sweep takes a few seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

# l2 from 1 down to 1e-8 in half-decades, on standardised features and the *mean* loss (sklearn's
# C = 1 / (l2 * n)). Half-decades: neighbouring values change the accuracy little, so the pick is
# not a coin flip between distant models. Down to 1e-8: a random-init ViT's standardised features
# have covariance eigenvalues from ~50 down to ~1e-4 (measured on the quick start's Pico/4), and
# directions that small need a weak penalty; on such a spectrum a synthetic problem
# (tests/test_quick_probe.py) picked 1e-7, and a grid stopping at 1e-5 lost 1-3 points to its
# Bayes-optimal accuracy.
DEFAULT_L2_GRID = tuple(float(10.0 ** (k / 2)) for k in range(0, -17, -1))
# Curvature of the mean softmax cross-entropy per unit feature variance, roughly p(1 - p) at
# p ~ 1/10: the preconditioner's scale. Any value within a few x of the truth works.
_CURVATURE = 0.1


@dataclasses.dataclass
class LogisticFit:
    """A fitted probe: ``logits = x @ w + b`` on standardised features, and how the fit ended."""

    w: np.ndarray          # [D, C]
    b: np.ndarray          # [C]
    l2: float
    iterations: int
    grad_norm: float       # preconditioned gradient norm at the end
    objective: float
    converged: bool        # grad_norm < tol (False: max_iter ran out first)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class per row of standardised features ``x``."""
        return np.argmax(np.asarray(x, np.float32) @ self.w + self.b, axis=-1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 accuracy on standardised features ``x`` with integer labels ``y``."""
        return float(np.mean(self.predict(x) == np.asarray(y)))


def standardise(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``train_x`` and ``others`` standardised with ``train_x``'s per-feature mean and std (float32)."""
    train_x = np.asarray(train_x, np.float64)
    mean = train_x.mean(0, keepdims=True)
    std = np.sqrt(train_x.var(0, keepdims=True) + 1e-6)  # constant features become 0, not NaN
    return [((np.asarray(x, np.float64) - mean) / std).astype(np.float32) for x in (train_x,) + others]


@functools.lru_cache(maxsize=4)
def _solver(memory: int):
    """The jitted L-BFGS program; one compile per shapes and ``memory`` (``max_iter``, ``tol`` are traced)."""

    def solve(x, y, weights, l2, p, u0, b0, max_iter, tol):
        def objective(params):
            u, b = params
            w = p @ u
            ce = optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y)
            # Weighted mean: the held-out selection and the final fit share one program (the
            # held-out rows get weight 0) instead of compiling one per number of rows.
            return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(w * w)

        opt = optax.lbfgs(memory_size=memory)
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=objective)
            return optax.apply_updates(params, updates), state

        def keep_going(carry):
            _, state = carry
            count = optax.tree_utils.tree_get(state, "count")
            grad_norm = optax.tree_utils.tree_norm(optax.tree_utils.tree_get(state, "grad"))
            return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

        params = (u0, b0)
        params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
        # The state's gradient is the one at the final params (value_and_grad_from_state reuses it).
        grad_norm = optax.tree_utils.tree_norm(optax.tree_utils.tree_get(state, "grad"))
        return params, optax.tree_utils.tree_get(state, "count"), grad_norm, objective(params)

    return jax.jit(solve)


@functools.lru_cache(maxsize=1)
def _device():
    """Where and in what precision the fits run: float64 on the host CPU.

    In float32 the gradient norm of a weakly regularised fit bottoms out at a few 1e-6, too close
    to any useful tolerance; float64 makes "converged" mean converged. The problem is small
    (features [N, D] of a quick probe), so the host CPU is the right device even beside an
    accelerator (TPUs have no float64). Without a CPU backend (JAX_PLATFORMS excluding it) the
    fits run in float32 on the default device.
    """
    try:
        return jax.devices("cpu")[0], np.float64
    except RuntimeError:
        return jax.devices()[0], np.float32


def _eigen(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and vectors of the weighted second moment of ``x`` (float64)."""
    xw = np.asarray(x, np.float64) * np.sqrt(weights / weights.sum())[:, None]
    values, vectors = np.linalg.eigh(xw.T @ xw)
    return np.maximum(values, 0.0), vectors


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, *, weights: np.ndarray | None = None,
                 init: LogisticFit | None = None, max_iter: int = 1000, tol: float = 1e-6, memory: int = 20,
                 eigen: tuple[np.ndarray, np.ndarray] | None = None) -> LogisticFit:
    """Minimises ``weighted mean cross-entropy + l2/2 |W|^2`` over ``(W, b)`` by preconditioned L-BFGS.

    ``x``: standardised features [N, D]; ``weights``: per-row weights (0 drops a row; default 1);
    ``init``: a previous fit to start from (warm start along an ``l2`` path); ``eigen``: the
    precomputed :func:`_eigen` of ``(x, weights)`` (reused across an ``l2`` sweep). Stops when the
    gradient norm in the preconditioned coordinates is below ``tol``; ``converged`` is False when
    ``max_iter`` iterations ran out first. Runs in float64 on the host CPU (:func:`_device`).
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    weights = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
    values, vectors = _eigen(x, weights) if eigen is None else eigen
    scale = np.sqrt(_CURVATURE * values + l2)          # (c Lambda + l2)^(1/2)
    p = vectors / scale                                # W = P U
    dim = x.shape[1]
    if init is None:
        u0, b0 = np.zeros((dim, num_classes)), np.zeros(num_classes)
    else:
        u0, b0 = scale[:, None] * (vectors.T @ init.w), init.b   # U = P^-1 W
    device, dtype = _device()
    with jax.enable_x64(dtype == np.float64):
        put = lambda a, t=dtype: jax.device_put(np.asarray(a, t), device)
        (u, b), count, grad_norm, value = _solver(int(memory))(
            put(x), put(y, np.int32), put(weights), put(l2), put(p), put(u0), put(b0), put(max_iter, np.int32),
            put(tol))
        u, b, count, grad_norm, value = (np.asarray(a) for a in (u, b, count, grad_norm, value))
    w = p @ u.astype(np.float64)
    return LogisticFit(w=w.astype(np.float32), b=b.astype(np.float32), l2=float(l2), iterations=int(count),
                       grad_norm=float(grad_norm), objective=float(value), converged=bool(grad_norm < tol))


def holdout_split(n: int, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of ``round(fraction * n)`` held-out rows (a fixed random subset)."""
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))]] = True
    return held


def select_l2(x: np.ndarray, y: np.ndarray, num_classes: int, *, l2_grid=DEFAULT_L2_GRID, holdout: float = 0.2,
              seed: int = 0, max_iter: int = 1000, tol: float = 1e-6) -> tuple[float, dict, LogisticFit]:
    """Picks ``l2`` by accuracy on a held-out ``holdout`` fraction of the training rows.

    Returns ``(l2, {l2: held-out accuracy}, fit of the picked l2 on the other rows)``. The grid is
    walked from strong to weak regularisation, each fit starting from the previous one. The pick
    maximises the held-out accuracy averaged with the grid neighbours' (a plateau's middle rather
    than a noise spike at its edge, so a neighbouring ``l2`` changes the result little); ties go
    to the stronger regularisation (the simpler model).
    """
    held = holdout_split(len(x), holdout, seed)
    weights = (~held).astype(np.float32)
    eigen = _eigen(x, weights)
    grid = sorted(l2_grid, reverse=True)
    fits, fit = [], None
    for l2 in grid:
        fit = fit_logistic(x, y, num_classes, l2, weights=weights, init=fit, max_iter=max_iter, tol=tol, eigen=eigen)
        fits.append(fit)
    scores = [f.accuracy(x[held], y[held]) for f in fits]
    smoothed = [np.mean(scores[max(0, i - 1):i + 2]) for i in range(len(grid))]
    best = int(np.argmax(smoothed))  # the first maximum: the strongest regularisation among ties
    return grid[best], dict(zip(grid, scores)), fits[best]


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int, *,
              l2: float | None = None, l2_grid=DEFAULT_L2_GRID, holdout: float = 0.2, seed: int = 0,
              max_iter: int = 1000, tol: float = 1e-6) -> dict:
    """The quick probe: standardise, pick ``l2`` on held-out training rows, refit on all of them, test.

    ``l2`` fixes the regularisation instead of the sweep (for sensitivity checks). Returns
    ``test_accuracy``, ``train_accuracy``, ``l2``, ``holdout_accuracy`` ({l2: accuracy}; empty
    when ``l2`` is given), ``iterations`` and ``converged`` of the final fit, and ``at_grid_edge``
    (the pick is the grid's smallest or largest value, so the grid may be too narrow).
    """
    xtr, xte = standardise(train_x, test_x)
    ytr = np.asarray(train_y)
    scores, init = {}, None
    if l2 is None:
        l2, scores, init = select_l2(xtr, ytr, num_classes, l2_grid=l2_grid, holdout=holdout, seed=seed,
                                     max_iter=max_iter, tol=tol)
    fit = fit_logistic(xtr, ytr, num_classes, l2, init=init, max_iter=max_iter, tol=tol)
    return {"test_accuracy": fit.accuracy(xte, test_y), "train_accuracy": fit.accuracy(xtr, ytr), "l2": fit.l2,
            "holdout_accuracy": scores, "iterations": fit.iterations, "converged": fit.converged,
            "at_grid_edge": bool(scores) and l2 in (min(scores), max(scores)), "fit": fit}
