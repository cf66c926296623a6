"""One smoke shrink: any recipe's run (not its model) cut to a few CPU steps on bundled data."""

from __future__ import annotations

from typing import Callable

import ml_collections

from maskjax.config.datasets import embedded_data, fsdd_data, moving_cifar_data, wikitext2_data


def smoke(config: ml_collections.ConfigDict, *, data: Callable[[ml_collections.ConfigDict], None] = embedded_data,
          global_batch: int = 8, steps: int = 2) -> None:
    """Shrinks a recipe's run (not its model) to ``steps`` logged CPU steps on bundled data.

    ``data`` points ``config.data`` at data that needs no download (default: the CIFAR-10 subset
    inside the package; :func:`text_smoke` and :func:`media_smoke` pass the family's own). The
    mesh spreads over whatever devices exist, warm-up is cut, evaluators are off and one
    checkpoint is written at the end.
    """
    data(config)
    config.global_batch = global_batch
    config.grad_accum = 1
    config.total_steps = steps
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
    config.log_every_steps = 1
    config.checkpoint.every_steps = steps
    config.evals = ml_collections.ConfigDict()
    config.optim.warmup_epochs = 0.0
    if config.optim.get("warmup_steps") is not None:
        config.optim.warmup_steps = 1


def text_smoke(config: ml_collections.ConfigDict, *, global_batch: int = 8, steps: int = 2) -> None:
    """:func:`smoke` on WikiText-2 (the text family's bundled data)."""
    smoke(config, data=wikitext2_data, global_batch=global_batch, steps=steps)


def media_smoke(config: ml_collections.ConfigDict, *, audio: bool = False, global_batch: int = 8,
                steps: int = 2) -> None:
    """:func:`smoke` on moving-CIFAR clips (video) or, with ``audio=True``, the Free Spoken Digit Dataset."""
    smoke(config, data=fsdd_data if audio else moving_cifar_data, global_batch=global_batch, steps=steps)
