"""Pure optimisation helpers shared by the trainer and the evaluators.

Learning-rate schedules (:mod:`.schedules`), the recipes' optimisers (:mod:`.optimizers`),
MAE's layer-wise lr decay (:mod:`.layer_decay`) and LARS (:mod:`.lars`). This package sits below
``maskjax.train`` and ``maskjax.eval`` so that neither imports the other's internals; it depends
only on jax and optax. ``maskjax.train.optim`` and ``maskjax.train.layer_decay`` re-export it.
"""
