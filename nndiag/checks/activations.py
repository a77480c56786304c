"""``activation_stats`` and ``dead_neurons``: one capture pass, two verdicts.

Lecture 5's weight-initialization demo: with weights too small the activations' std
collapses toward 0 with depth; too large and tanh/sigmoid pin at their rails. Xavier
(1/sqrt(fan_in)) keeps tanh alive, He (sqrt(2/fan_in)) keeps ReLU nets alive. A ReLU unit
that outputs 0 for every sample of a batch is dead: it passes no gradient.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import LayerRecord, Session, Vocabulary
from nndiag.results import CheckResult, Status

_SATURATING = ("tanh", "sigmoid")


_HE_KINDS = ("relu", "leaky_relu", "elu", "gelu", "silu")  # rectifier-like: He init


def recommended_std(layer: LayerRecord) -> float | None:
    """He for the ReLU family, Xavier otherwise, for the weights feeding ``layer``."""
    if not layer.fan_in:
        return None
    gain = 2.0 if layer.kind in _HE_KINDS else 1.0
    return math.sqrt(gain / layer.fan_in)


# A weight std within this factor of the recommended one already is that init: advice to
# use it would recommend what the model has.
_INIT_MATCH = 0.2


def _init_advice(layer: LayerRecord, words: Vocabulary) -> str:
    target = recommended_std(layer)
    if target is None or layer.weight_std is None:
        return "Use Xavier init for tanh/sigmoid and He init for ReLU layers."
    he = layer.kind in _HE_KINDS
    rule = "He sqrt(2/fan_in)" if he else "Xavier 1/sqrt(fan_in)"
    call = words.he_init if he else words.xavier_init
    if abs(layer.weight_std / target - 1) <= _INIT_MATCH:
        return (
            f"Weights of {layer.weight_layer} have std {layer.weight_std:.3g}, which matches "
            f"{rule} with fan_in {layer.fan_in} ({target:.3g}): the init is not the cause. "
            "Look elsewhere: the biases feeding the layer, the inputs' scale (standardize "
            "them), or an operation between the layers that rescales the signal."
        )
    return (
        f"Weights of {layer.weight_layer} have std {layer.weight_std:.3g}; {rule} with "
        f"fan_in {layer.fan_in} wants {target:.3g} ({call})."
    )


def _bias_candidates(weight: str) -> list[str]:
    """Names a backend gives the bias next to weight tensor or layer ``weight``."""
    names = [f"{weight}.bias", f"{weight}/bias", f"{weight}_bias"]
    for w, b in (("weight", "bias"), ("kernel", "bias"), ("W", "b"), ("w", "b")):
        if w in weight:
            head, _, tail = weight.rpartition(w)
            names.append(head + b + tail)
    return names


def _feeding_bias(session: Session, layer: LayerRecord) -> tuple[str, float, float] | None:
    """(name, mean, fraction negative) of the bias feeding ``layer``, when one is found."""
    if not layer.weight_layer:
        return None
    try:
        with session.objective(session.rows(1)) as objective:
            values = objective.values()
    except Exception:  # the bias only sharpens the hint; without it the hint stays general
        return None
    for name in _bias_candidates(layer.weight_layer):
        value = values.get(name)
        if value is not None and np.ndim(value) == 1 and np.size(value) == layer.units:
            bias = np.asarray(value, dtype=np.float64)
            return name, float(bias.mean()), float((bias < 0).mean())
    return None


def _dead_hint(session: Session, layer: LayerRecord) -> str:
    general = (
        "Dead units pass no gradient. He init or LeakyReLU keep units alive; after "
        "training, many dead units mean the learning rate was too high (lower it)."
    )
    found = _feeding_bias(session, layer)
    if found is None:
        feed = f" (weights {layer.weight_layer})" if layer.weight_layer else ""
        return (
            f"Look at the bias feeding {layer.name}{feed}: a large negative bias keeps every "
            f"unit below 0. {general}"
        )
    name, mean, negative = found
    scale = layer.weight_std if layer.weight_std else 0.0
    if mean < 0 and negative > 0.5:
        return (
            f"The bias {name} feeding {layer.name} has mean {mean:.3g} "
            f"({negative:.0%} of it negative): it keeps the units below 0 for every "
            "sample. Initialize it to 0 (or a small positive value); the learning rate "
            "cannot revive units that pass no gradient."
        )
    return (
        f"The bias {name} feeding {layer.name} has mean {mean:.3g} (weights std "
        f"{scale:.3g}): not what kills the units. Look at the inputs' scale and sign and "
        f"at the weights feeding it. {general}"
    )


def _layer_evidence(layer: LayerRecord) -> dict[str, Any]:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "depth": layer.depth,
        "units": layer.units,
        "mean": layer.mean,
        "std": layer.std,
        "saturated": layer.saturated_fraction,
        "hist_counts": np.asarray(layer.hist_counts).tolist(),
        "hist_edges": list(layer.hist_edges),
        "weight_layer": layer.weight_layer,
        "weight_std": layer.weight_std,
        "recommended_std": recommended_std(layer),
    }


def _is_gate(layer: LayerRecord) -> bool:
    """An activation whose output multiplies another tensor (squeeze-excitation's sigmoid
    scaling the trunk, a GLU's activation): a small, saturated output is its job, not
    collapse. Where the backend does not follow the data (``gate`` None), a sigmoid named
    as a gate or a scale."""
    if layer.gate is not None:
        return layer.gate
    name = layer.name.lower()
    return layer.kind in ("sigmoid", "hardsigmoid") and ("gate" in name or "scale" in name)


def _parent(name: str) -> str:
    """The module an activation runs in (``a.se.act1`` and ``a.se.gate:sigmoid`` -> ``a.se``)."""
    return name.split("#", 1)[0].split(":", 1)[0].rpartition(".")[0]


def gate_branch(layers: list[LayerRecord]) -> set[str]:
    """The gates and, in each gate's own module, the activations that see the same pooled
    vector as the gate does: a squeeze-excitation block's hidden unit, whether the block is
    a module of its own (torchvision's ``activation`` beside ``scale_activation``) or
    written inline in a residual block (whose trunk activations, not pooled, stay judged).
    That branch sees one pooled vector per sample, nearly alike across samples at init, so
    its few units are on or off for all of them (a coin flip each): neither a collapse nor
    dead units, and only the gate's input scale."""
    gates = [layer for layer in layers if _is_gate(layer)]
    pooled = {_parent(g.name) for g in gates if g.pooled} - {""}
    named = {_parent(g.name) for g in gates if g.gate is None} - {""}  # data not followed
    return {g.name for g in gates} | {
        x.name
        for x in layers
        if (x.pooled and _parent(x.name) in pooled) or _parent(x.name) in named
    }


def activation_stats(session: Session, config: Config) -> CheckResult:
    """Fail when activation std collapses or explodes with depth, or tanh/sigmoid
    saturate; recommends Xavier/He with numbers."""
    check = "activation_stats"
    layers = session.capture(rows=config.max_samples, bins=config.histogram_bins)
    if not layers:
        return CheckResult(
            check,
            "skip",
            "No activation function (ReLU, tanh, sigmoid, ...) ran in forward: nothing to measure.",
        )
    evidence = {
        "layers": [_layer_evidence(layer) for layer in layers],
        "collapse_warn": config.collapse_warn,
        "collapse_fail": config.collapse_fail,
        "saturation_warn": config.saturation_warn,
        "saturation_fail": config.saturation_fail,
    }
    branch = gate_branch(layers)
    gates = [layer for layer in layers if layer.name in branch]
    layers = [layer for layer in layers if layer.name not in branch] or layers
    # The activation whose output the model returns (a decoder's sigmoid), or one over the
    # class scores (SqueezeNet's last ReLU, pooled after it), is the output: initial_loss
    # judges its scale, and a small one there is by design.
    task = session.task
    last = layers[-1]
    over_scores = task.kind == "classification" and last.units == task.num_classes
    head = next((layer for layer in layers if layer.output), last if over_scores else None)
    if head is not None and len(layers) > 1:
        layers = [layer for layer in layers if layer is not head]
    else:
        head = None
    first = layers[0]
    ratios = [layer.std / first.std if first.std > 0 else math.nan for layer in layers]
    saturated = [layer for layer in layers if layer.kind in _SATURATING]
    worst_saturation = max(saturated, key=lambda x: x.saturated_fraction, default=None)
    finite = [r for r in ratios if math.isfinite(r)]
    metrics: dict[str, Any] = {
        "layers": len(layers),
        "first_std": first.std,
        "last_std": layers[-1].std,
        "min_std_ratio": min(finite, default=math.nan),
        "max_std_ratio": max(finite, default=math.nan),
        "max_saturated": worst_saturation.saturated_fraction if worst_saturation else 0.0,
        "collapse_fail_below": config.collapse_fail,
        "saturation_fail_above": config.saturation_fail,
        "gates_left_out": len(gates),
        "output_layer_left_out": head.name if head is not None else None,
    }
    profile = " -> ".join(f"{layer.std:.3g}" for layer in layers[:12])
    profile += " ..." if len(layers) > 12 else ""

    if any(not math.isfinite(layer.std) for layer in layers):
        bad = next(layer for layer in layers if not math.isfinite(layer.std))
        return CheckResult(
            check,
            "fail",
            f"Activations of {bad.name} are not finite.",
            metrics,
            evidence,
            "Find where the forward pass overflows.",
        )
    findings: list[tuple[str, str, LayerRecord]] = []  # (status, text, layer)
    constant = next((x for x in layers if x.std == 0.0), None)
    if constant is not None:
        findings.append(
            (
                "fail",
                f"the output of {constant.name} is constant (std 0): no signal and "
                "no gradient pass through it",
                constant,
            )
        )
    for level, limit in (("fail", config.saturation_fail), ("warn", config.saturation_warn)):
        hit = [x for x in saturated if x.saturated_fraction > limit]
        if hit:
            layer = hit[0]
            findings.append(
                (
                    level,
                    f"{layer.kind} saturates: {layer.saturated_fraction:.0%} of "
                    f"{layer.name}'s outputs sit within 1% of a rail (limit "
                    f"{limit:.0%}); init too large",
                    layer,
                )
            )
            break
    for level, limit in (("fail", config.collapse_fail), ("warn", config.collapse_warn)):
        hit = [x for x, r in zip(layers, ratios) if r < limit]
        if hit:
            layer = hit[0]
            findings.append(
                (
                    level,
                    f"std collapses with depth: {first.std:.3g} ({first.name}) "
                    f"-> {layer.std:.3g} ({layer.name}), below {limit:g}x the first "
                    "layer; init too small",
                    layer,
                )
            )
            break
    for level, limit in (("fail", 1 / config.collapse_fail), ("warn", 1 / config.collapse_warn)):
        hit = [x for x, r in zip(layers, ratios) if r > limit and x.kind not in _SATURATING]
        if hit:
            layer = hit[0]
            findings.append(
                (
                    level,
                    f"std explodes with depth: {first.std:.3g} ({first.name}) "
                    f"-> {layer.std:.3g} ({layer.name}), above {limit:g}x the first "
                    "layer; init too large",
                    layer,
                )
            )
            break
    if not findings:
        return CheckResult(
            check,
            "pass",
            f"Activation std stays healthy over {len(layers)} layers: {profile}."
            + (
                f" {len(gates)} squeeze-excitation gate layer(s) left out (the sigmoid "
                "scales and the units feeding them): a small or all-alike output is their job."
                if gates
                else ""
            ),
            metrics,
            evidence,
        )
    status: Status = "fail" if any(s == "fail" for s, _, _ in findings) else "warn"
    findings.sort(key=lambda f: (f[0] != "fail", f[2].depth))
    text = "; ".join(t for _, t, _ in findings)
    metrics["first_bad_layer"] = findings[0][2].name
    return CheckResult(
        check,
        status,
        f"{text[0].upper()}{text[1:]}. Std by depth: {profile}.",
        metrics,
        evidence,
        _advice(session, findings[0][2]),
    )


def _advice(session: Session, layer: LayerRecord) -> str:
    """The likely cause of the first finding: a ReLU layer that outputs a constant has
    dead units (the bias feeding it, when that shows), anything else the init's scale."""
    if layer.std == 0.0 and layer.kind == "relu" and layer.mean == 0.0:  # every unit off
        return _dead_hint(session, layer)
    return _init_advice(layer, session.words)


def dead_neurons(session: Session, config: Config) -> CheckResult:
    """Fail when a layer's ReLU units never fire over the batch (dead), naming the
    layer and the bias feeding it."""
    check = "dead_neurons"
    captured = session.capture(rows=config.max_samples, bins=config.histogram_bins)
    layers = [x for x in captured if x.kind == "relu" and x.fires is not None]
    if not layers:
        return CheckResult(
            check,
            "skip",
            "No ReLU units in the forward pass (only ReLU-family "
            "outputs can be exactly 0 for every sample).",
        )
    branch = gate_branch(captured)
    rows: list[dict[str, Any]] = []
    for layer in layers:
        dead = int((np.asarray(layer.fires) == 0).sum())
        rows.append(
            {
                "name": layer.name,
                "units": layer.units,
                "dead": dead,
                "dead_fraction": dead / layer.units,
                "gate_branch": layer.name in branch,
            }
        )
    samples = layers[0].count // max(layers[0].units, 1)
    judged = [r for r in rows if not r["gate_branch"]] or rows
    worst = max(judged, key=lambda r: r["dead_fraction"])
    metrics = {
        "layers": len(rows),
        "worst_layer": worst["name"],
        "worst_dead_fraction": worst["dead_fraction"],
        "dead_units": sum(r["dead"] for r in rows),
        "units": sum(r["units"] for r in rows),
        "samples": samples,
        "warn_above": config.dead_warn,
        "fail_above": config.dead_fail,
        "gate_branch_left_out": len(rows) - len(judged),
    }
    evidence = {"layers": rows, "warn": config.dead_warn, "fail": config.dead_fail}
    profile = ", ".join(f"{r['name']} {r['dead_fraction']:.0%}" for r in rows[:8])
    status: Status
    if worst["dead_fraction"] >= config.dead_fail:
        status = "fail"
    elif worst["dead_fraction"] > config.dead_warn:  # SageMaker: more than 50% of a layer
        status = "warn"
    else:
        return CheckResult(
            check,
            "pass",
            f"Dead ReLU units per layer over {samples} positions: {profile}.",
            metrics,
            evidence,
        )
    limit = config.dead_fail if status == "fail" else config.dead_warn
    bad = next(  # the first layer past the limit
        r
        for r in judged
        if (r["dead_fraction"] >= limit if status == "fail" else r["dead_fraction"] > limit)
    )
    return CheckResult(
        check,
        status,
        f"{bad['dead']} of {bad['units']} units of {bad['name']} "
        f"({bad['dead_fraction']:.0%}) never fire over {samples} positions (limit {limit:.0%}). "
        f"Per layer: {profile}.",
        metrics,
        evidence,
        _dead_hint(session, next(x for x in layers if x.name == bad["name"])),
    )
