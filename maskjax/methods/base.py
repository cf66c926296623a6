"""The method contract: everything the trainer, evaluators, ``bench``, ``fitcheck``, ``flops`` and the
reproduction ledger use from a method, in one base class.

A method is masking + model + objective wired in one file. It subclasses :class:`Method`,
registers itself with ``@register("name")`` (``maskjax.methods``) and fills in:

=====================  ===========  =========================================================
member                 required     used by
=====================  ===========  =========================================================
``modality``           yes          trainer, bench, evaluators: the data pipeline and batch layout
``attention_impls``    no           ``validate_config``: the ``model.attention_impl`` values accepted
``config_section()``   no           ``maskjax.config.method_config``: the method's own options
                                    (``config.<name>``) with their defaults
``check_config``       no           ``validate_config``: one message per problem, before compiling
``build(rngs)``        yes          trainer, evaluators: the NNX model
``loss(...)``          yes          the jitted train step
``features(...)``      yes          probe, kNN and feature evaluators: ``[B, D]`` features
``encoder(model)``     no           fine-tuning evaluators: the module they train
``feature_name(pool)`` no           evaluator messages: what the feature is
``flops(global_batch)``  no         ``bench`` (MFU), ``fitcheck``, ``maskjax.perf.flops``
``after_step(...)``    no           the train step, after the optimizer update: non-gradient
                                    state such as an EMA teacher (checkpointed with the state)
``reconstruct(...)``   no           the reconstruction-figure evaluator
``figures(...)``       no           the ``figures`` evaluator: method-specific figures (targets,
                                    spectra) written as ``<name>.png``
``sample(...)``        no           sample-grid evaluators of generative methods
``eval_stats(...)``    no           held-out loss/accuracy evaluators (e.g. masked-token accuracy)
``batch_spec()``       no           bench, fitcheck: batch shapes (default: the modality's layout)
``synthetic_batch``    no           bench: random batches (default: the modality's)
``use_synthetic_data`` no           bench, fitcheck: stand-ins for data-derived constants
=====================  ===========  =========================================================

The optional members raise :class:`NotSupported` by default; callers turn it into a clear
message ("method 'x' has no reconstruct") or skip the column (bench prints MFU as n/a), so a new
method starts with ``build``, ``loss`` and ``features`` and adds the rest when it needs them.

Masks. ``loss`` receives per-example PRNG keys (``keys[i] = fold_in(fold_in(seed, step), i)``),
so a sample's mask does not depend on batch splitting or sharding and a resumed run draws the
same masks. Shapes stay static: MAE-style masks keep a fixed count ``K`` (``Mask.ids_keep``);
methods that draw a ratio per example (MaskGIT, MAGE, masked diffusion) use
:func:`maskjax.masking.rate_mask`, a ``[B, L]`` boolean mask plus per-example weights, and
:func:`maskjax.objectives.weighted_token_mean` for the loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax


class NotSupported(NotImplementedError):
    """The method does not offer this optional capability (the message says which and what to do)."""


class Method:
    """Base class of every method; see the module docstring for the contract.

    Constructed from the whole (resolved) config; ``self.config`` keeps it.
    """

    name: ClassVar[str] = "?"         # set by @register
    modality: ClassVar[str] = "image"  # a registered data modality (maskjax.data.modalities)
    # The model.attention_impl values the model accepts (None: all of maskjax.models.layers.ATTENTION_IMPLS).
    attention_impls: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config):
        self.config = config

    # --- configuration -------------------------------------------------------------------------

    @classmethod
    def config_section(cls) -> dict:
        """Defaults of the method's own options, stored at ``config.<name>`` (empty: none).

        Shared sections (``model``, ``masking``, ``loss``, ``data``) come from the family's schema
        in :mod:`maskjax.config.schema`; options that only this method reads belong here.
        """
        return {}

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Appends one actionable message per problem with ``config`` (nothing compiled yet)."""

    # --- training ------------------------------------------------------------------------------

    def build(self, rngs) -> Any:
        """Builds the NNX model from ``self.config`` (params from ``rngs.params()``)."""
        raise NotImplementedError(f"method {self.name!r} must define build(rngs)")

    def loss(self, model, batch: dict, keys: jax.Array, train: bool,
             step: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Scalar loss and a dict of scalar metrics for one (micro-)batch.

        ``keys``: per-example PRNG keys [B]; ``train``: dropout and other training-only noise;
        ``step``: the optimizer step (traced; None outside training) for in-loss schedules.
        """
        raise NotImplementedError(f"method {self.name!r} must define loss(model, batch, keys, train, step)")

    def after_step(self, params: dict, extra: dict, step: jax.Array) -> dict:
        """Non-gradient state after an optimizer step: returns the new ``extra`` (default: unchanged).

        Runs inside the jitted step with the *updated* params (pure dicts) and the model's
        non-parameter variables ``extra`` (e.g. an EMA teacher declared as an ``nnx.Variable``
        that is not an ``nnx.Param``); ``step`` is the step count after the update. The result
        is part of the train state, so it is checkpointed and resumed exactly.

        A loss may also return non-gradient batch statistics under ``metrics["batch_stats"]``
        (``maskjax.train.step.BATCH_STATS``; e.g. an EMA codebook's assignment counts): the step
        averages them over micro-batches, does not log them, and passes them here as
        ``after_step(params, extra, step, batch_stats=...)`` (override with that keyword then).
        """
        del params, step
        return extra

    # --- representations and figures ------------------------------------------------------------

    def features(self, model, inputs) -> jax.Array:
        """The frozen representation ``[B, D]`` that probes, kNN and feature evaluators use.

        ``inputs`` is what the modality's ``take_examples`` returns (e.g. images [B, H, W, C]).
        The function is jitted and sharded by the evaluators: keep it pure.
        """
        raise NotSupported(f"method {self.name!r} defines no features(model, inputs); probe and kNN "
                           "evaluators need it")

    def feature_name(self, pool: str | None = None) -> str:
        """What :meth:`features` returns for ``pool``, for messages ("cls", "pooled", ...)."""
        return pool or "default"

    def encoder(self, model) -> Any:
        """The module that fine-tuning evaluators train (default: the whole model)."""
        return model

    def finetune_encoder(self, *, image_size: int, drop_path: float, rngs: Any) -> Any:
        """A fresh encoder of this method's fine-tuning architecture for the ``finetune`` evaluator,
        or None (the default): maskjax's ViT of ``config.model.variant``, which MAE-style encoders
        load unchanged. Override it when the recipe fine-tunes another architecture (e.g. SimMIM's
        layer scale and per-block relative position biases); the encoder's parameters load by name
        from :meth:`encoder` (through its ``adapt_pretrained(tree)`` when it has one).
        """
        del image_size, drop_path, rngs
        return None

    def reconstruct(self, model, inputs, key: jax.Array) -> dict:
        """``{"original", "masked", "reconstruction"}`` arrays for a figure."""
        raise NotSupported(f"method {self.name!r} has no reconstruct(model, inputs, key)")

    def figures(self, model, inputs, key: jax.Array) -> dict[str, dict]:
        """Method-specific figures of ``inputs``: ``{name: {column: array, ..., "caption": str}}``.

        For what ``reconstruct``'s original | masked | reconstruction grid cannot show (a HOG
        target, a spectrum). Each figure is a grid with one row per example and one column per
        array; every array is ``[B, H, W, 3]`` (the same ``H, W`` within a figure) in *display*
        space: values in [0, 1], NaN for a blank (grey) pixel. The ``figures`` evaluator jits it
        (keep it pure; captions are Python strings, so they may not depend on traced values) and
        writes figure ``name`` to ``<workdir>/<name>.png``.
        """
        raise NotSupported(f"method {self.name!r} has no figures(model, inputs, key)")

    def sample(self, model, key: jax.Array, num: int) -> Any:
        """``num`` generated examples (generative methods)."""
        raise NotSupported(f"method {self.name!r} has no sample(model, key, num)")

    def eval_stats(self, model, batch: dict, keys: jax.Array, options: dict) -> dict:
        """Summable held-out statistics of one batch (e.g. ``{"nll_sum", "correct", "count"}``)."""
        raise NotSupported(f"method {self.name!r} has no eval_stats(model, batch, keys, options)")

    # --- cost ----------------------------------------------------------------------------------

    def flops(self, global_batch: int) -> Any:
        """The analytic :class:`~maskjax.models.flop_count.FlopCount` of one training step."""
        raise NotSupported(f"method {self.name!r} has no analytic FLOP count (flops(global_batch)); "
                           "bench reports MFU from XLA's cost analysis instead")

    def use_synthetic_data(self) -> None:
        """Called by ``bench``/``fitcheck`` before they feed :meth:`synthetic_batch` batches.

        A method that reads constants from real data (a vocabulary's special token ids) sets
        stand-ins here when that data is absent; the default does nothing.
        """

    def synthetic_batch(self, seed: int = 0) -> dict:
        """This process's share of a random batch with :meth:`batch_spec`'s shapes (numpy)."""
        from maskjax.data.modalities import get_modality

        return get_modality(self.modality).synthetic_batch(self.config, self.batch_spec(), seed)

    def batch_spec(self) -> dict:
        """Global shapes of one training batch (``jax.ShapeDtypeStruct`` by key), no data read.

        Default: the modality's layout for this config; override when the method reads other keys.
        """
        from maskjax.data.modalities import get_modality

        return get_modality(self.modality).batch_spec(self.config)
