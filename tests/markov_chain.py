"""Exact computations on a small Markov chain, for the masked-diffusion ELBO tests (numpy, float64).

The data distribution is a first-order Markov chain over ``V`` tokens and ``N`` positions, small
enough (V^N sequences, 2^N masks) that every expectation the diffusion ELBOs take can be computed
by enumeration:

* ``log p(x)`` and the entropy ``H = E_p[-log p(x)]`` exactly;
* the exact denoiser ``p(x0_n = v | z_t)`` at every position by forward-backward, the unmasked
  positions of ``z_t`` being observed and the masked ones not (optionally with a per-token
  likelihood of being masked, which GenMD4's state-dependent forward process needs);
* the exact distribution of the T-step ancestral sampler that uses this denoiser
  (:class:`AncestralSampler`), by dynamic programming over the set of still-masked positions.
"""

from __future__ import annotations

import itertools

import numpy as np


class MarkovChain:
    """A Markov chain ``p(x) = init[x_0] prod_n trans[x_{n-1}, x_n]``: ``vocab`` tokens, ``length`` positions."""

    def __init__(self, init: np.ndarray, trans: np.ndarray, length: int):
        self.init = np.asarray(init, np.float64)
        self.trans = np.asarray(trans, np.float64)
        self.vocab = self.init.shape[0]
        self.length = length

    @classmethod
    def random(cls, seed: int, vocab: int, length: int, concentration: float = 0.7) -> "MarkovChain":
        """Dirichlet(``concentration``) initial distribution and transition rows (peaked, not degenerate)."""
        rng = np.random.default_rng(seed)
        init = rng.dirichlet(np.full(vocab, concentration))
        trans = rng.dirichlet(np.full(vocab, concentration), size=vocab)
        return cls(init, trans, length)

    def sequences(self) -> np.ndarray:
        """All ``V^N`` sequences, int32 [V^N, N], in lexicographic order."""
        return np.asarray(list(itertools.product(range(self.vocab), repeat=self.length)), np.int32)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """``log p(x)`` [B] for int sequences [B, N]."""
        x = np.asarray(x)
        out = np.log(self.init[x[:, 0]])
        for n in range(1, self.length):
            out = out + np.log(self.trans[x[:, n - 1], x[:, n]])
        return out

    def entropy(self) -> float:
        """``H(p) = E_p[-log p(x)]`` in nats, by enumeration."""
        logp = self.log_prob(self.sequences())
        return float(-np.sum(np.exp(logp) * logp))

    def marginals(self) -> np.ndarray:
        """The one-position marginals ``p(x_n = v)`` [N, V]."""
        out = [self.init]
        for _ in range(1, self.length):
            out.append(out[-1] @ self.trans)
        return np.stack(out)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` iid sequences [n, N] (int32)."""
        x = np.empty((n, self.length), np.int32)
        x[:, 0] = rng.choice(self.vocab, size=n, p=self.init)
        cdf = np.cumsum(self.trans, axis=1)
        for i in range(1, self.length):
            u = rng.random(n)[:, None]
            x[:, i] = np.minimum((u > cdf[x[:, i - 1]]).sum(axis=1), self.vocab - 1)
        return x

    def posterior(self, zt: np.ndarray, mask_id: int, masked_lik: np.ndarray | None = None) -> np.ndarray:
        """The exact denoiser ``p(x_n = v | z_t)`` [B, N, V] by forward-backward.

        A position with ``zt != mask_id`` is observed (its row is one-hot at ``zt``). A masked
        position is unobserved; ``masked_lik`` [B, N, V] multiplies in the likelihood of having
        been masked given the token (GenMD4: ``1 - alpha_t(v)``; for a schedule shared by all
        tokens it is constant and can be left out).
        """
        zt = np.asarray(zt)
        b, n_len = zt.shape
        masked = zt == mask_id
        emit = np.where(masked[..., None], 1.0, np.eye(self.vocab)[np.where(masked, 0, zt)])
        if masked_lik is not None:
            emit = np.where(masked[..., None], masked_lik, emit)
        fwd = np.empty((b, n_len, self.vocab))
        bwd = np.ones((b, n_len, self.vocab))
        f = self.init[None] * emit[:, 0]
        fwd[:, 0] = f / f.sum(-1, keepdims=True)
        for i in range(1, n_len):   # normalised at each step: only the shape of the message matters
            f = (fwd[:, i - 1] @ self.trans) * emit[:, i]
            fwd[:, i] = f / f.sum(-1, keepdims=True)
        for i in range(n_len - 2, -1, -1):
            g = (emit[:, i + 1] * bwd[:, i + 1]) @ self.trans.T
            bwd[:, i] = g / g.sum(-1, keepdims=True)
        post = fwd * bwd
        return post / post.sum(-1, keepdims=True)


def all_masks(length: int) -> np.ndarray:
    """All ``2^N`` masks, bool [2^N, N] (True = masked); mask ``m`` has bit ``n`` of ``m`` at position n."""
    m = np.arange(2 ** length)[:, None]
    return ((m >> np.arange(length)[None]) & 1).astype(bool)


class Corruptions:
    """Every (sequence, mask) pair: ``x0``, ``hidden``, ``zt`` [S * M, N], sequence-major."""

    def __init__(self, chain: MarkovChain, mask_id: int):
        self.chain = chain
        self.mask_id = mask_id
        self.seqs = chain.sequences()
        self.masks = all_masks(chain.length)
        s, m = len(self.seqs), len(self.masks)
        self.x0 = np.repeat(self.seqs, m, axis=0)
        self.hidden = np.tile(self.masks, (s, 1))
        self.zt = np.where(self.hidden, mask_id, self.x0).astype(np.int32)
        self.num_hidden = self.hidden.sum(axis=1)
        self.log_p = chain.log_prob(self.seqs)
        self.p = np.exp(self.log_p)
        # Only (V + 1)^N of the V^N * 2^N corruptions differ: the denoiser is computed on those.
        self.unique_zt, self.inverse = np.unique(self.zt, axis=0, return_inverse=True)
        self.inverse = self.inverse.reshape(-1)

    def denoiser(self, masked_lik: np.ndarray | None = None) -> np.ndarray:
        """The exact ``p(x_n = v | z_t)`` [S * M, N, V] of every corruption (see ``MarkovChain.posterior``;
        ``masked_lik`` [V] is the same for every masked position, as in GenMD4 at a given t)."""
        lik = None
        if masked_lik is not None:
            shape = self.unique_zt.shape + (self.chain.vocab,)
            lik = np.broadcast_to(np.asarray(masked_lik, np.float64), shape)
        return self.chain.posterior(self.unique_zt, self.mask_id, lik)[self.inverse]

    def mask_weights(self, mask_prob: float) -> np.ndarray:
        """``q(mask | t)`` [S * M] when every token is masked independently with ``mask_prob``."""
        k = self.num_hidden
        return mask_prob ** k * (1.0 - mask_prob) ** (self.chain.length - k)

    def per_sequence(self, values: np.ndarray) -> np.ndarray:
        """Reshapes [S * M] values to [S, M]."""
        return np.asarray(values, np.float64).reshape(len(self.seqs), len(self.masks))


class AncestralSampler:
    """``log p_theta(x)`` of the ancestral sampler with the exact denoiser, exactly, for every sequence.

    The sampler starts all-masked; at step i every still-masked position independently unmasks
    with probability ``unmask_probs[i]`` (= ``(alpha_s - alpha_t) / (1 - alpha_t)``) to a token
    drawn from the denoiser at the current ``z``, else stays masked (MD4's ``ancestral`` sampler,
    MDLM's ``ddpm``). ``log_denoiser_x0`` [S * M, N] is ``log p(x0_n | z)`` at each corruption's
    own ``x0`` (time-independent for a schedule shared by all tokens). The probability of producing
    ``x`` is a sum over the paths of masks M_T = all ⊇ ... ⊇ M_0 = ∅ whose revealed tokens are x's.
    """

    def __init__(self, corr: Corruptions, log_denoiser_x0: np.ndarray):
        s, m = len(corr.seqs), len(corr.masks)
        masks = corr.masks
        # sub[M, M']: M' is a subset of M; revealed[M, M', n]: n in M \ M'.
        sub = np.all(~masks[None] | masks[:, None], axis=-1)
        revealed = masks[:, None] & ~masks[None]
        logd = np.where(corr.hidden, log_denoiser_x0, 0.0).reshape(s, m, -1)
        # prod over the revealed positions of the denoiser's probability of x's token: [S, M, M'].
        log_b = np.einsum("smn,mkn->smk", logd, revealed.astype(np.float64))
        self.b = np.where(sub[None], np.exp(log_b), 0.0)
        self.n_masked = masks.sum(-1)

    def log_probs(self, unmask_probs) -> np.ndarray:
        """``log p_T(x)`` [S] for the steps' unmasking probabilities (first step first)."""
        state = np.zeros(self.b.shape[:2])
        state[:, -1] = 1.0   # all masked
        for w in unmask_probs:
            if w == 0.0:
                continue
            # w^|M \ M'| (1 - w)^|M'| = w^|M| ((1 - w) / w)^|M'|: no [S, M, M'] temporary per step.
            state = np.matmul((state * w ** self.n_masked)[:, None, :], self.b)[:, 0] * (
                (1.0 - w) / w) ** self.n_masked
        return np.log(state[:, 0])
