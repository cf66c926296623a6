"""What to change when a train step does not fit: ``maskjax fitcheck`` compiles the usual remedies.

A remedy is one combination of

- **gradient accumulation** (``grad_accum`` 2, 4, 8, 16 as the global batch allows): the same
  FLOPs in smaller micro-batches; it costs step time through smaller matmuls and, under FSDP,
  one parameter all-gather per micro-batch;
- **rematerialisation** (``remat``: a policy of :data:`maskjax.models.remat.REMAT_POLICIES`):
  activations are recomputed in the backward pass instead of stored; it costs compute, which the
  compile measures (XLA's FLOPs against the config's own);
- **more FSDP** (the ``data`` mesh axis folded into ``fsdp``): parameters and optimizer state
  are sharded over every data-parallel device instead of replicated; it costs communication
  (parameters all-gathered per layer, gradients reduce-scattered), which depends on the
  interconnect and is not measured here.

Candidates are ranked by an expected step-time cost (the table below; a remat policy's cost is
replaced by the FLOP increase XLA measured once it has been compiled). The search compiles the
cheapest candidate that is still worth compiling, again and again, until a few fit or the
compile budget is spent. A candidate is not worth compiling when

- it is no stronger than one that did not fit (memory falls with accumulation, with a stronger
  remat policy and with more FSDP), or stronger than one that fits (it would only cost more), or
- a memory model fitted to the compiles so far predicts it needs more than the budget (10%
  margin): ``total = fixed(mesh) + carry(mesh) * [accum > 1] + activations(remat) / accum``,
  where ``carry`` is the gradient accumulator (one copy of the parameters per device).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

import numpy as np

from maskjax.errors import ConfigError

ACCUM_CHOICES = (1, 2, 4, 8, 16)
# Partial order of memory strength: "attention" and "dots" recompute different things.
REMAT_BELOW = {"none": {"none"}, "attention": {"none", "attention"}, "dots": {"none", "dots"},
               "full": {"none", "attention", "dots", "full"}}
# Expected step-time cost in percent before anything is measured (rough, for ranking only):
# accumulation per doubling of micro-batches; remat policies roughly as their recomputed share
# of the FLOPs ("full" is one extra forward pass = 1/3 of a training step).
ACCUM_COST_PER_DOUBLING = 3.0
REMAT_COST = {"none": 0.0, "attention": 5.0, "dots": 15.0, "full": 33.0}
FSDP_COST = 10.0
PREDICTION_MARGIN = 1.10


@dataclasses.dataclass(frozen=True)
class Remedy:
    """One combination of the three knobs; ``mesh`` is the resolved (data, fsdp, tensor) shape."""

    grad_accum: int
    remat: str
    mesh: tuple[int, int, int]

    def below(self, other: "Remedy") -> bool:
        """Whether this one saves no more memory than ``other`` on every knob (expected)."""
        return (self.grad_accum <= other.grad_accum and self.remat in REMAT_BELOW[other.remat]
                and self.mesh[1] <= other.mesh[1])


@dataclasses.dataclass
class Measured:
    """What one ahead-of-time compile gives the search (bytes are per device)."""

    total: int
    flops: float | None   # global, all micro-batches counted
    carry_bytes: int      # one copy of the parameters per device: the accumulation carry


@dataclasses.dataclass
class Trial:
    """A compiled (or invalid) candidate, as printed and written to the JSON report."""

    overrides: list        # [(dotted field, text)], exactly what was compiled
    cost_pct: float        # expected step-time cost, percent
    cost_kind: str         # "compute", "communication" or "compute + communication"
    total: int | None      # measured bytes per device; None when the config was invalid
    fits: bool | None
    predicted: int | None  # what the memory model expected before the compile (None: no model yet)
    error: str | None = None

    @property
    def flags(self) -> str:
        """The command-line overrides of this remedy."""
        return override_line(self.overrides)


@dataclasses.dataclass
class RemedySearch:
    """The outcome of :func:`search_remedies`."""

    budget: int
    trials: list
    compiles: int
    max_compiles: int
    skipped: int                      # candidates never compiled (pruned or predicted too big)
    untried_predicted_fits: list      # [(flags, predicted bytes)] left when the compile budget ran out
    seconds: float = 0.0              # wall time of the search

    @property
    def fits(self) -> list:
        """Trials that fit, cheapest expected cost first."""
        return sorted((t for t in self.trials if t.fits), key=lambda t: t.cost_pct)


def override_line(overrides) -> str:
    """``[("grad_accum", "4"), ...]`` -> ``--config.grad_accum=4 ...``."""
    return " ".join(f"--config.{k}={v}" for k, v in overrides)


def base_remedy(config, num_devices: int) -> Remedy:
    """The config's own settings as a :class:`Remedy` (the point every candidate is compared with)."""
    from maskjax.core.mesh import resolve_mesh_shape
    from maskjax.models.remat import resolve_remat

    return Remedy(int(config.grad_accum), resolve_remat(config.get("remat", False)),
                  tuple(resolve_mesh_shape(config.mesh, num_devices)))


def _batch_divisor(config, mesh: tuple[int, int, int]) -> int:
    from maskjax.core.mesh import MESH_AXES, normalize_rules

    axes = normalize_rules(config.get("sharding_rules")).get("batch", ("data", "fsdp"))
    return math.prod(mesh[MESH_AXES.index(a)] for a in axes)


def candidates(config, base: Remedy) -> list[Remedy]:
    """Every combination stronger than ``base`` that the global batch and mesh allow (``base`` excluded)."""
    batch = int(config.global_batch)
    policies = [p for p in ("none", "attention", "dots", "full") if base.remat in REMAT_BELOW[p]]
    if "remat" not in config:  # a plugin method's config without the field: no policies to offer
        policies = [base.remat]
    meshes = [base.mesh]
    data, fsdp, tensor = base.mesh
    if data > 1:  # fold data parallelism into FSDP; a tensor axis stays as the user chose it
        meshes.append((1, data * fsdp, tensor))
    out = []
    for mesh in meshes:
        div = _batch_divisor(config, mesh)
        for accum in ACCUM_CHOICES:
            if accum < base.grad_accum or batch % accum or (batch // accum) % div:
                continue
            for policy in policies:
                r = Remedy(accum, policy, mesh)
                if r != base:
                    out.append(r)
    return out


def remedy_overrides(config, base: Remedy, r: Remedy) -> list[tuple[str, str]]:
    """The ``--config.X=V`` items that turn ``config`` (whose settings are ``base``) into ``r``."""
    items = []
    if r.grad_accum != base.grad_accum:
        items.append(("grad_accum", str(r.grad_accum)))
    if r.remat != base.remat:
        # True is the config's spelling of "full" (and the one the docs use).
        items.append(("remat", {"full": "True", "none": "False"}.get(r.remat, r.remat)))
    if r.mesh != base.mesh:
        items.append(("mesh.data", str(r.mesh[0])))
        if int(config.mesh.get("tensor", 1)) == -1:
            items.append(("mesh.fsdp", str(r.mesh[1])))
        else:  # -1 keeps the line valid on any device count with the same tensor axis
            items.append(("mesh.fsdp", "-1"))
    return items


def apply_remedy(config, overrides):
    """A copy of ``config`` with the remedy's overrides applied exactly as the command line would."""
    from maskjax.config.commandline import apply_text_overrides

    out = copy.deepcopy(config)
    apply_text_overrides(out, overrides)
    return out


def expected_cost(base: Remedy, r: Remedy, measured_remat: dict) -> tuple[float, str]:
    """(expected step-time cost in percent, its kind) of ``r`` against ``base``."""
    cost, kinds = 0.0, []
    if r.grad_accum > base.grad_accum:
        cost += ACCUM_COST_PER_DOUBLING * math.log2(r.grad_accum / base.grad_accum)
        kinds.append("compute")
    if r.remat != base.remat:
        cost += measured_remat.get(r.remat, REMAT_COST[r.remat] - REMAT_COST[base.remat])
        if "compute" not in kinds:
            kinds.append("compute")
    if r.mesh != base.mesh:
        cost += FSDP_COST
        kinds.append("communication")
    return cost, " + ".join(kinds)


class MemoryModel:
    """``total = fixed(mesh) + carry(mesh) * [accum > 1] + act(remat) / accum``, fitted to compiles.

    Before a second accumulation point exists the split of the config's own compile is a prior:
    activations = temporaries - one parameter copy (the gradients). A remat policy or mesh
    with no compile yet has no prediction (it is worth compiling: that is how it is learnt).
    """

    def __init__(self, base: Remedy, measured: Measured, temporaries: int):
        self.base = base
        self.observed: list[tuple[Remedy, Measured]] = [(base, measured)]
        self.prior_act = max(0, temporaries - measured.carry_bytes)

    def add(self, r: Remedy, m: Measured) -> None:
        """Records one compile."""
        self.observed.append((r, m))

    def _carry(self, mesh) -> int | None:
        return next((m.carry_bytes for r, m in self.observed if r.mesh == mesh), None)

    def _y(self, r: Remedy, m: Measured) -> float:
        return m.total - (m.carry_bytes if r.grad_accum > 1 else 0)

    def _base_fit(self) -> tuple[float, float]:
        """(fixed, act) at the config's own remat policy and mesh."""
        pts = [(1.0 / r.grad_accum, self._y(r, m)) for r, m in self.observed
               if r.remat == self.base.remat and r.mesh == self.base.mesh]
        if len({x for x, _ in pts}) >= 2:
            slope, intercept = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
            return float(intercept), max(0.0, float(slope))
        x, y = pts[0]
        act = self.prior_act
        return y - act * x, act

    def predict(self, r: Remedy) -> float | None:
        """Predicted bytes per device of ``r``, or None where nothing compiled yet tells."""
        fixed0, act0 = self._base_fit()
        acts = {self.base.remat: act0}
        fixed = {self.base.mesh: fixed0}
        for q, m in self.observed:  # activations of other policies, from compiles on the base mesh
            if q.mesh == self.base.mesh and q.remat not in acts:
                acts[q.remat] = max(0.0, (self._y(q, m) - fixed0) * q.grad_accum)
        for q, m in self.observed:  # the fixed part of other meshes, from a policy already known
            if q.mesh not in fixed and q.remat in acts:
                fixed[q.mesh] = self._y(q, m) - acts[q.remat] / q.grad_accum
        carry = self._carry(r.mesh)
        if r.remat not in acts or r.mesh not in fixed or carry is None:
            return None
        return fixed[r.mesh] + (carry if r.grad_accum > 1 else 0) + acts[r.remat] / r.grad_accum


def search_remedies(config, base_measured: Measured, *, temporaries: int, budget: int, num_devices: int,
                    compile_fn: Callable[[object], Measured], max_compiles: int = 8, want: int = 3) -> RemedySearch:
    """Compiles remedies for ``config`` (which needs ``base_measured.total`` > ``budget`` bytes per device).

    ``compile_fn(config) -> Measured`` compiles one candidate config for the same target (raising
    :class:`~maskjax.errors.ConfigError` when the target rejects it). Stops after ``want``
    remedies fit or ``max_compiles`` compiles; see the module docstring for the order.
    """
    t0 = time.perf_counter()
    base = base_remedy(config, num_devices)
    model = MemoryModel(base, base_measured, temporaries)
    untried = candidates(config, base)
    trials: list[Trial] = []
    tried: list[tuple[Remedy, Trial]] = []
    measured_remat: dict[str, float] = {}
    compiles = 0

    def pruned(r: Remedy) -> bool:
        return any((r.below(q) and t.fits is False) or (q.below(r) and t.fits) for q, t in tried)

    def worth(r: Remedy) -> bool:
        p = model.predict(r)
        return p is None or p <= PREDICTION_MARGIN * budget

    while untried and compiles < max_compiles and sum(1 for t in trials if t.fits) < want:
        viable = [r for r in untried if not pruned(r) and worth(r)]
        if not viable:
            break
        r = min(viable, key=lambda q: (expected_cost(base, q, measured_remat)[0], q.grad_accum, q.mesh[1], q.remat))
        untried.remove(r)
        overrides = remedy_overrides(config, base, r)
        cost, kind = expected_cost(base, r, measured_remat)
        predicted = model.predict(r)
        try:
            m = compile_fn(apply_remedy(config, overrides))
        except ConfigError as e:
            reason = str(e).removeprefix("invalid config for this target: ")
            trial = Trial(overrides, cost, kind, None, None, None, error=reason)
            trials.append(trial)
            continue
        compiles += 1
        model.add(r, m)
        if r.remat != base.remat and r.remat not in measured_remat and m.flops and base_measured.flops:
            # What recomputation really costs in FLOPs for this model, instead of the table's guess.
            extra = 100.0 * (m.flops / base_measured.flops - 1.0)
            if r.grad_accum == base.grad_accum and r.mesh == base.mesh:
                measured_remat[r.remat] = max(0.0, extra)
                cost, kind = expected_cost(base, r, measured_remat)
        trial = Trial(overrides, cost, kind, m.total, m.total <= budget,
                      None if predicted is None else int(predicted))
        trials.append(trial)
        tried.append((r, trial))
    left = [r for r in untried if not pruned(r)]
    predicted_fits = []
    for r in sorted(left, key=lambda q: expected_cost(base, q, measured_remat)[0]):
        p = model.predict(r)
        if p is not None and p <= budget:
            predicted_fits.append((override_line(remedy_overrides(config, base, r)), int(p)))
    return RemedySearch(budget=budget, trials=trials, compiles=compiles, max_compiles=max_compiles,
                        skipped=len(untried), untried_predicted_fits=predicted_fits[:3],
                        seconds=time.perf_counter() - t0)


def format_remedies(search: RemedySearch, fmt_bytes: Callable[[float], str]) -> list[str]:
    """The report's lines about remedies (each compiled one with its memory, then what to add)."""
    budget = search.budget
    lines = ["remedies tried, each compiled ahead of time for this target, cheapest expected cost first.",
             "  Accumulation and remat cost compute (smaller micro-batches; recomputed activations: remat's",
             "  cost is the FLOP increase XLA measured); more FSDP costs communication (parameters gathered",
             "  per layer; not measured). Other percentages are rough estimates, for ranking only.",
             f"  {'verdict':<12}  {'per device':>10} {'budget':>6}  {'expected step-time cost':<29}  flags"]
    for t in search.trials:
        if t.error:
            lines.append(f"  {'invalid':<12}  {t.flags}: {t.error}")
            continue
        verdict = "fits" if t.fits else "does not fit"
        cost = f"~+{t.cost_pct:.0f}% {t.cost_kind}"
        lines.append(f"  {verdict:<12}  {fmt_bytes(t.total):>10} {100 * t.total / budget:5.0f}%  {cost:<29}  "
                     f"{t.flags}")
    lines.append(f"  {search.compiles} of at most {search.max_compiles} compiles ({search.seconds:.0f} s); "
                 f"{search.skipped} other combinations not compiled (no stronger than one that did not fit, "
                 f"stronger than one that fits, or predicted over the budget)")
    fits = search.fits
    if fits:
        best = fits[0]
        lines.append(f"fix: add {best.flags}   (needs {fmt_bytes(best.total)}; ~+{best.cost_pct:.0f}% step time, "
                     f"{best.cost_kind})")
        for t in fits[1:]:
            lines.append(f" or: add {t.flags}   (needs {fmt_bytes(t.total)}; ~+{t.cost_pct:.0f}% step time, "
                         f"{t.cost_kind})")
        return lines
    if search.untried_predicted_fits:
        flags, p = search.untried_predicted_fits[0]
        lines.append(f"no compiled remedy fits; predicted to fit but not compiled (limit reached): {flags} "
                     f"(~{fmt_bytes(p)}); check it with --max-compiles or by adding it")
    else:
        done = [t for t in search.trials if t.total is not None]
        least = min(done, key=lambda t: t.total) if done else None
        smallest = f"; the smallest compiled was {least.flags} at {fmt_bytes(least.total)}" if least else ""
        lines.append(f"no remedy fits{smallest}: use more devices (or chips with more memory), a smaller "
                     f"global batch or a smaller model")
    return lines
