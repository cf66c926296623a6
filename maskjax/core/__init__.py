"""The engine's shared core, below every other layer but masking/objectives' kernels: the mesh and
sharding rules (:mod:`.mesh`, :mod:`.sharding`), the model template (:mod:`.templates`), the train
state layout (:mod:`.state`), the Orbax checkpoint format (:mod:`.checkpoint`), per-example keys
(:mod:`.keys`) and pure-dict trees (:mod:`.trees`). The trainer, evaluators, converters and
performance tools all use these; none of them imports upward.
"""
