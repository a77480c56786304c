"""``init_scale``: is each layer's weight scale a reasonable initialization, and are its
units initialized differently?

Lecture 5's "reasonable initialization": weights with std 1/sqrt(fan_in) (Xavier) ahead
of tanh, sigmoid or a linear unit, sqrt(2/fan_in) (He) ahead of a ReLU-family unit. A
scale off by a factor r shrinks (or grows) the signal by about r per layer, and that
compounds over a plain stack of layers: the lecture's std 0.01 on 500-unit tanh layers is
0.22x Xavier and leaves 1e-6 of the signal after 10 layers. And weights initialized
identically (all zeros, a constant) give units that compute the same output and get the
same gradient: they never differentiate.

What is judged:

- the weights feeding each activation (from the capture pass), against the rule of that
  activation (the same rule ``activation_stats`` recommends with); a layer is left out
  when a normalization ran since the previous activation (batch/layer/RMS norm re-sets the
  scale, so the weights' scale cannot compound: a run of off layers ends there), and so
  are squeeze-excitation gates and the layer feeding each gate;
- the output layer is ``initial_loss``'s to judge and is left out here (the last weight
  matrix the backend lists, the last to run once a capture ran, also when an activation
  follows it, as in SqueezeNet); so is the last hidden layer when it alone is off: it only
  rescales the logits (torchvision's MobileNetV3 draws its classifier's hidden layer at std
  0.01, 0.17x He), which ``initial_loss`` measures;
- identical rows (output units) in any weight matrix but the output layer's.

Verdict: a layer whose std is off its rule by more than ``init_scale_warn`` (either way)
warns; a run of consecutive such layers (in depth order, all off the same way) whose
ratios multiply to beyond ``init_scale_fail`` fails, as does one layer off by that much on
its own. Identical units fail. Mild deviations that compound only over many layers (Xavier
under ReLU: 0.71x per layer) are ``activation_stats``' to measure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from nndiag.checks.activations import (
    _HE_KINDS,
    _init_advice,
    _is_gate,
    gate_branch,
    recommended_std,
)
from nndiag.config import Config
from nndiag.contract import LayerRecord, Session
from nndiag.results import CheckResult, Status

CHECK = "init_scale"


def _identical_rows(matrix: np.ndarray) -> tuple[int, int]:
    """(units that share their row with another unit, size of the largest such group)."""
    rows = np.ascontiguousarray(matrix)
    if rows.ndim != 2 or len(rows) < 2 or rows.shape[1] < 2:
        return 0, 0  # one unit, or one weight per unit: nothing to tell apart
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, counts = np.unique(keys, return_counts=True)
    shared = counts[counts > 1]
    return int(shared.sum()), int(shared.max(initial=0))


def _name(name: str) -> str:
    """A layer's name as a reader sees it (``nn.Sequential`` names layers by index)."""
    return f"layer {name}" if name.isdigit() else (name or "(the model)")


def init_scale(session: Session, config: Config) -> CheckResult:
    """Warn/fail when a layer's weight std is far from He/Xavier for the activation that
    follows; fail when units of a layer are initialized identically."""
    layers = session.capture(rows=config.max_samples, bins=config.histogram_bins)
    matrices = session.weights()
    if not matrices:
        return CheckResult(
            CHECK, "skip", "No dense or convolution weights found: nothing to judge."
        )
    # The last weight matrix is the output layer, also when an activation follows it
    # (SqueezeNet's ReLU over the class scores).
    output = list(matrices)[-1]
    rows: list[dict[str, Any]] = []
    judged: list[tuple[LayerRecord, float, float, float]] = []  # layer, std, target, ratio
    in_order: list[tuple[LayerRecord, float] | None] = []  # None: a layer left out
    seen: set[str] = set()
    # Squeeze-excitation: the module holding a gate also holds the layer that feeds it
    # (torchvision's fc1 before scale_activation, timm's conv_reduce before gate). That
    # branch only scales the gate's input: torchvision draws it with fan_out, 5x He on
    # EfficientNet, and its fc2 the reverse.
    branch = gate_branch(layers)
    for layer in layers:
        weight = layer.weight_layer
        if weight is None or weight not in matrices or weight in seen:
            continue
        seen.add(weight)
        matrix = matrices[weight]
        fan_in = int(matrix.shape[1])
        std = float(np.asarray(matrix, dtype=np.float64).std())
        layer = dataclasses.replace(layer, fan_in=fan_in, weight_std=std)
        target = recommended_std(layer) or math.nan
        ratio = std / target if target > 0 else math.nan
        reason = None
        if weight == output:
            reason = "output layer (initial_loss judges it)"
        elif layer.normalized:
            reason = "normalized before the activation: scale-invariant"
        elif _is_gate(layer):
            reason = "gate (squeeze-excitation scale)"
        elif layer.name in branch:
            reason = "squeeze-excitation branch (feeds a gate)"
        row = {
            "name": weight,
            "activation": layer.name,
            "kind": layer.kind,
            "depth": layer.depth,
            "fan_in": fan_in,
            "std": std,
            "target": target,
            "rule": "He" if layer.kind in _HE_KINDS else "Xavier",
            "ratio": ratio,
            "judged": reason is None,
            "not_judged": reason,
            "status": "pass",
        }
        rows.append(row)
        if reason is None:
            judged.append((layer, std, target, ratio))
        in_order.append((layer, ratio) if reason is None else None)

    # Runs of consecutive judged layers all off the same way: their ratios compound.
    findings: list[tuple[Status, str, str, LayerRecord | None]] = []  # status, cause, text
    run: list[tuple[LayerRecord, float]] = []

    # The last hidden layer's scale, off on its own, only rescales the logits (the output
    # layer's input): initial_loss judges that (torchvision's MobileNetV3 classifier.0 is
    # std 0.01, 0.17x He). In a run with layers below it, it compounds like any other.
    last = judged[-1][0] if judged else None
    if last is not None and any(
        x.depth > last.depth and x.weight_layer not in (None, output) for x in layers
    ):
        last = None  # more weight layers follow it

    def close() -> None:
        if not run:
            return
        if len(run) == 1 and last is not None and run[0][0] is last:
            by_name[last.weight_layer or ""]["status"] = "pass"
            by_name[last.weight_layer or ""]["not_judged"] = "feeds only the output layer"
            by_name[last.weight_layer or ""]["judged"] = False
            run.clear()
            return
        product = math.prod(r for _, r in run)
        small = product < 1
        far = product < 1 / config.init_scale_fail or product > config.init_scale_fail
        status: Status = "fail" if far else "warn"
        for member, _ in run:  # a failing run fails each of its layers
            by_name[member.weight_layer or ""]["status"] = status
        # the worst layer (a zero ratio, all-zero weights, is the worst of all)
        first, ratio = max(run, key=lambda item: abs(math.log(max(item[1], 1e-300))))
        names = ", ".join(_name(x.weight_layer or "") for x, _ in run[:4])
        names += ", ..." if len(run) > 4 else ""
        size = "small" if small else "large"
        over = f" over {len(run)} consecutive layers ({names})" if len(run) > 1 else ""
        findings.append(
            (
                status,
                f"too_{size}",
                f"init too {size}: {_name(first.weight_layer or '')} has std "
                f"{first.weight_std:.3g}, {ratio:.2g}x the {rule(first)} "
                f"{recommended_std(first) or math.nan:.3g} for its {first.kind}"
                + (f"; the ratios multiply to {product:.2g}x{over}" if len(run) > 1 else ""),
                first,
            )
        )
        run.clear()

    def rule(layer: LayerRecord) -> str:
        return (
            f"He sqrt(2/{layer.fan_in})"
            if layer.kind in _HE_KINDS
            else f"Xavier 1/sqrt({layer.fan_in})"
        )

    by_name = {row["name"]: row for row in rows}
    for entry in in_order:
        if entry is None:  # a normalization, a gate or the output: the scale re-sets
            close()
            continue
        layer, ratio = entry
        off = math.isfinite(ratio) and (
            ratio < 1 / config.init_scale_warn or ratio > config.init_scale_warn
        )
        if not off:
            close()
            continue
        if run and (run[-1][1] < 1) != (ratio < 1):
            close()
        run.append((layer, ratio))
    close()

    symmetric: list[dict[str, Any]] = []
    for name, matrix in matrices.items():
        if name == output:
            continue
        shared, largest = _identical_rows(matrix)
        if shared:
            symmetric.append(
                {"name": name, "units": int(matrix.shape[0]), "shared": shared, "largest": largest}
            )
            if name in by_name:
                by_name[name]["status"] = "fail"
    if symmetric:
        first = symmetric[0]
        zero = not np.any(matrices[first["name"]])
        more = f" (and {len(symmetric) - 1} more layer(s))" if len(symmetric) > 1 else ""
        findings.insert(
            0,
            (
                "fail",
                "symmetric",
                f"{first['shared']} of {first['units']} units of {_name(first['name'])} have "
                f"identical weights ({'all zero' if zero else 'identical rows'}; largest "
                f"group {first['largest']}){more}: units initialized identically compute the "
                "same output and get the same gradient, so they never differentiate",
                None,
            ),
        )

    ratios = [r for _, _, _, r in judged if math.isfinite(r)]
    metrics: dict[str, Any] = {
        "layers": len(rows),
        "judged": len(judged),
        "normalized_left_out": sum(
            1 for row in rows if row["not_judged"] and "normalized" in row["not_judged"]
        ),
        "output_layer": output,
        "min_ratio": min(ratios, default=math.nan),
        "max_ratio": max(ratios, default=math.nan),
        "symmetric_layers": [s["name"] for s in symmetric],
        "warn_factor": config.init_scale_warn,
        "fail_factor": config.init_scale_fail,
    }
    evidence = {
        "layers": rows,
        "symmetric": symmetric,
        "warn": config.init_scale_warn,
        "fail": config.init_scale_fail,
    }
    profile = ", ".join(
        f"{_name(row['name'])} {row['ratio']:.2g}x" for row in rows if row["judged"]
    )
    if len(profile) > 300:
        profile = profile[:297] + "..."
    if not findings:
        left = len(rows) - len(judged)
        if judged:
            text = (
                f"Weight std within {config.init_scale_warn:g}x of He/Xavier for the "
                f"activation that follows, on {len(judged)} layer(s) (std / rule: {profile})."
            )
        else:
            text = "No layer's scale to judge."
        if left:
            text += (
                f" {left} layer(s) not judged: "
                f"{metrics['normalized_left_out']} normalized before their activation, the "
                "rest output layers, gates or the layers feeding them."
            )
        return CheckResult(
            CHECK, "pass", text + " No units initialized identically.", metrics, evidence
        )
    findings.sort(key=lambda f: f[0] != "fail")
    status: Status = "fail" if any(f[0] == "fail" for f in findings) else "warn"
    metrics["cause"] = findings[0][1]
    metrics["causes"] = [f[1] for f in findings]
    bad = next((f[3] for f in findings if f[3] is not None), None)
    metrics["first_bad_layer"] = (
        bad.weight_layer if bad is not None and findings[0][3] is not None else symmetric[0]["name"]
    )
    text = "; ".join(f[2] for f in findings)
    hints = []
    if symmetric:
        hints.append(
            "Draw the weights at random (never zeros or a constant): "
            f"{session.words.he_init} for ReLU layers, {session.words.xavier_init} for "
            "tanh/sigmoid."
        )
    if bad is not None:
        hints.append(_init_advice(bad, session.words))
    return CheckResult(
        CHECK,
        status,
        f"{text[0].upper()}{text[1:]}." + (f" Std / rule per layer: {profile}." if profile else ""),
        metrics,
        evidence,
        " ".join(hints),
    )
