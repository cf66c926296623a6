"""NNX state as plain nested dicts, the form the train state, checkpoints and optimisers use.

Below ``maskjax.train`` and ``maskjax.eval`` (``maskjax.core.state`` re-exports it).
"""

from __future__ import annotations

from flax import nnx


def to_tree(state: nnx.State) -> dict:
    """nnx.State -> nested dict of arrays with string keys.

    String keys (``nnx.List`` indices become "0", "1", ...) keep Orbax round trips exact and
    let layer-decay rules match block indices by name.
    """

    def strkeys(node):
        if isinstance(node, dict):
            return {str(k): strkeys(v) for k, v in node.items()}
        return node

    return strkeys(nnx.to_pure_dict(state))
