"""Synthetic check results with realistic evidence, for the report tests and benchmark.

Numbers follow what the checks record for CS231n-style MLPs (10 classes: initial loss
ln 10; relative gradient errors around 1e-9 for a healthy model; tanh nets whose
activations collapse or saturate with depth). No framework is needed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from nndiag.checks import BUILTIN
from nndiag.config import DEFAULT_CHECKS
from nndiag.results import STATUSES, CheckResult, Cost, Report

PLOTTED = {spec.id for spec in BUILTIN if spec.plot is not None}
# The statuses below are written for the checks that draw plots (the first six).
KNOWN_CHECKS = tuple(c for c in DEFAULT_CHECKS if c in PLOTTED)
# Check ids without a plotter: they get a metrics table (and a counterexample when given).
EXTRA_CHECKS = ("permutation_invariance", "loss_is_finite", "batch_independence", "lr_sweep")

META = {
    "nndiag": "0.1.0",
    "python": "3.11.2",
    "frameworks": {"torch": "2.13.0", "numpy": "2.4.6"},
    "seed": 0,
    "created": "2025-01-31T12:00:00+00:00",
}

HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


def _gaussian_counts(
    mean: float, std: float, lo: float, hi: float, bins: int = 40, total: int = 5000
) -> list[int]:
    width = (hi - lo) / bins
    std = max(std, width / 4)
    centers = [lo + (i + 0.5) * width for i in range(bins)]
    weights = [math.exp(-0.5 * ((c - mean) / std) ** 2) for c in centers]
    norm = sum(weights) or 1.0
    return [round(total * w / norm) for w in weights]


def initial_loss(status: str, rng: random.Random) -> dict[str, Any]:
    expected = math.log(10)
    noise = 0.02
    measured = {
        "pass": expected + rng.uniform(-0.01, 0.01),
        "warn": expected * 1.16,
        "fail": expected * 4.3,
    }.get(status, expected)
    evidence = {
        "measured": measured,
        "expected": expected,
        "band": [expected - noise, expected + noise],
        "warn_band": [expected * 0.9 - noise, expected * 1.1 + noise],
        "fail_band": [expected * 0.75 - noise, expected * 1.25 + noise],
    }
    metrics = {
        "measured": measured,
        "expected": expected,
        "classes": 10,
        "samples": 512,
        "relative_error": abs(measured - expected) / expected,
        "warn": 0.1,
        "fail": 0.25,
    }
    return {
        "evidence": evidence,
        "metrics": metrics,
        "cost": Cost(2, 0, 0.011),
        "message": f"initial loss {measured:.3f}, expected ln(10) = {expected:.3f}",
        "hint": None
        if status == "pass"
        else "the last layer's weights are too large; scale them down (e.g. std 1e-2)",
    }


def regularization_loss(status: str, rng: random.Random) -> dict[str, Any]:
    strengths = [0.0, 1e-3, 1.0, 1e3]
    base = 2.30 + rng.uniform(-0.01, 0.01)
    losses = [base] * 4 if status == "fail" else [base, base + 0.002, base + 1.6, 1570.0]
    return {
        "evidence": {"strengths": strengths, "losses": losses},
        "metrics": {
            "loss_without": base,
            "loss_at_max": losses[-1],
            "rise": losses[-1] / base - 1,
            "min_rise": 1e-6,
        },
        "cost": Cost(4, 0, 0.02),
        "message": "the loss rises with the regularization strength"
        if status != "fail"
        else "the loss does not change between strength 0 and 1e3",
        "hint": None if status != "fail" else "the regularization term is not added to the loss",
    }


def overfit_small(status: str, rng: random.Random) -> dict[str, Any]:
    steps = 120
    if status == "fail":
        loss = [2.30 + 0.02 * math.sin(i / 3) + rng.uniform(0, 0.01) for i in range(steps)]
        accuracy = [0.1 + 0.05 * rng.random() for _ in range(steps)]
    else:
        loss = [2.30 * math.exp(-i / 9) + 2e-4 for i in range(steps)]
        accuracy = [min(1.0, 0.1 + i / 25) for i in range(steps)]
    return {
        "evidence": {"loss": loss, "accuracy": accuracy, "target_loss": 0.046},
        "metrics": {
            "initial_loss": loss[0],
            "final_loss": loss[-1],
            "final_accuracy": accuracy[-1],
            "steps": steps,
            "target_loss": 0.046,
        },
        "cost": Cost(steps, steps, 0.41),
        "message": f"final loss {loss[-1]:.3g} after {steps} steps on 20 samples",
        "hint": None
        if status != "fail"
        else "the model cannot fit 20 samples: check the "
        "optimizer step, the learning rate and that the loss uses the labels",
    }


def gradient_check(status: str, rng: random.Random) -> dict[str, Any]:
    tensors = []
    for i, (name, shape) in enumerate(
        [
            ("fc1.weight", [100, 3072]),
            ("fc1.bias", [100]),
            ("fc2.weight", [100, 100]),
            ("fc2.bias", [100]),
            ("fc3.weight", [10, 100]),
            ("fc3.bias", [10]),
        ]
    ):
        error = 10 ** rng.uniform(-10, -8)
        tensor_status = "pass"
        if status == "fail" and i == 2:
            error, tensor_status = 3.1e-2, "fail"
        elif status == "warn" and i == 0:
            error, tensor_status = 4e-6, "warn"
        tensors.append(
            {
                "name": name,
                "shape": shape,
                "rel_error": error,
                "step": 1e-6,
                "status": tensor_status,
            }
        )
    coordinates = [
        {
            "tensor": t["name"],
            "index": [rng.randrange(s) for s in t["shape"]],
            "analytic": rng.gauss(0, 1e-2),
            "numeric": rng.gauss(0, 1e-2),
            "rel_error": t["rel_error"] * rng.uniform(0.5, 2),
        }
        for t in tensors * 2
    ]
    worst = max(tensors, key=lambda t: t["rel_error"])
    return {
        "evidence": {
            "tensors": tensors,
            "warn": 1e-6,
            "fail": 1e-4,
            "bands": {"good": 1e-7, "kinks_ok": 1e-4, "wrong": 1e-2},
            "coordinates": coordinates,
        },
        "metrics": {
            "max_rel_error": worst["rel_error"],
            "worst_tensor": worst["name"],
            "warn": 1e-6,
            "fail": 1e-4,
            "directions": 6,
        },
        "cost": Cost(14, 7, 0.09),
        "message": f"greatest relative error {worst['rel_error']:.1e} in {worst['name']}",
        "hint": None
        if status == "pass"
        else f"the analytic gradient of {worst['name']} disagrees with the numeric one",
    }


def activation_stats(status: str, rng: random.Random, names: Sequence[str] = ()) -> dict[str, Any]:
    layers = []
    std = 0.63
    for depth in range(1, 11):
        if status == "fail":
            std *= 0.22  # the "weights too small" slide: activations collapse to 0
        elif status == "warn":
            std = min(0.98, std * 1.15)
        else:
            std *= 0.97
        saturated = max(0.0, (std - 0.85) * 2) if status == "warn" else 0.0
        name = names[depth - 1] if depth <= len(names) else f"tanh{depth}"
        layers.append(
            {
                "name": name,
                "kind": "tanh",
                "depth": depth,
                "mean": rng.gauss(0, std / 20),
                "std": std,
                "saturated": saturated,
                "hist_counts": _gaussian_counts(0.0, std, -1, 1),
                "hist_edges": [-1.0, 1.0],
                "weight_layer": f"fc{depth}",
                "weight_std": 0.01 if status == "fail" else 0.03,
                "recommended_std": 0.0316,
            }
        )
    return {
        "evidence": {"layers": layers},
        "metrics": {
            "first_std": layers[0]["std"],
            "last_std": layers[-1]["std"],
            "collapse_ratio": layers[-1]["std"] / layers[0]["std"],
            "collapse_warn": 0.2,
            "collapse_fail": 0.05,
        },
        "cost": Cost(1, 0, 0.03),
        "message": f"activation std goes from {layers[0]['std']:.2g} to "
        f"{layers[-1]['std']:.2g} over 10 tanh layers",
        "hint": None
        if status == "pass"
        else "initialize the weights with std 1/sqrt(fan_in) (Xavier) for tanh layers",
    }


def dead_neurons(status: str, rng: random.Random, names: Sequence[str] = ()) -> dict[str, Any]:
    fractions = {
        "pass": [0.02, 0.05, 0.08, 0.12],
        "warn": [0.1, 0.3, 0.55, 0.6],
        "fail": [0.2, 0.5, 0.78, 0.93],
    }.get(status, [0.0] * 4)
    layers = []
    for i, fraction in enumerate(fractions):
        units = 100
        name = names[i] if i < len(names) else f"relu{i + 1}"
        layers.append(
            {
                "name": name,
                "units": units,
                "dead": round(fraction * units),
                "dead_fraction": round(fraction * units) / units,
            }
        )
    return {
        "evidence": {"layers": layers, "warn": 0.5, "fail": 0.7},
        "metrics": {"max_dead_fraction": max(fractions), "warn": 0.5, "fail": 0.7},
        "cost": Cost(1, 0, 0.03),
        "message": f"{max(fractions):.0%} of the units of the worst layer never fire",
        "hint": None if status == "pass" else "lower the learning rate or the bias init",
    }


def batchnorm(status: str, rng: random.Random) -> dict[str, Any]:
    """A ResNet-like stack of batch-norm layers; a failure has stale statistics (momentum 0)."""
    names = [f"layer{i // 2 + 1}.{i % 2}.bn{j}" for i in range(4) for j in (1, 2)]
    stale = status == "fail"
    layers = [
        {
            "name": name,
            "momentum": "0" if stale else "0.1",
            "train_change": 0.0 if stale else rng.uniform(0.05, 1.0),
            "eval_change": 0.0,
            "tracks": True,
        }
        for name in names
    ]
    gap = {"pass": 0.01, "warn": 0.6}.get(status, 0.02)
    return {
        "evidence": {"layers": layers, "gap": gap, "gap_warn": 0.5},
        "metrics": {
            "layers": len(names),
            "tracking": len(names),
            "stale_layers": names if stale else [],
            "train_eval_gap": gap,
            "gap_warn": 0.5,
        },
        "cost": Cost(7, 0, 0.6),
        "message": f"running statistics of {len(names)} layers never moved in train mode"
        if stale
        else f"train and eval losses of the same batch differ by {gap:.0%}",
        "hint": "give the layers a momentum above 0" if stale else None,
    }


def learning_rate(status: str, rng: random.Random) -> dict[str, Any]:
    configured = {"pass": 1e-3, "warn": 1e-7, "fail": 10.0}.get(status, 1e-3)
    lrs = [configured * 10.0**k for k in range(-3, 4)]
    start = 2.30 + 0.01 * rng.random()
    final = []
    for lr in lrs:  # falls fastest at 1e-2, diverges from 1 on
        if lr >= 10:
            final.append(math.nan)
        elif lr >= 0.5:
            final.append(start * 40 * lr)
        else:
            final.append(start * (1 - 0.9 * min(1.0, lr / 1e-2)))
    works = [lr for lr, v in zip(lrs, final) if math.isfinite(v) and v < start * 0.999]
    curves = [[start, (start + v) / 2, v] for v in final]
    layers = [
        {
            "name": f"relu{i + 1}",
            "depth": i,
            "units": 64,
            "dead_before": 2 * i,
            "dead_after": 2 * i + (20 if status == "fail" else 1),
            "died": 20 if status == "fail" else 1,
            "dead_before_fraction": 2 * i / 64,
            "dead_after_fraction": (2 * i + (20 if status == "fail" else 1)) / 64,
        }
        for i in range(3)
    ]
    return {
        "evidence": {
            "lrs": lrs,
            "start": [start] * len(lrs),
            "final": final,
            "outcomes": ["falls" if lr in works else "flat" for lr in lrs],
            "curves": curves,
            "configured": configured,
            "works": [min(works), max(works)] if works else None,
            "diverge_factor": 3.0,
            "layers": layers,
            "died_fail": 0.1,
        },
        "metrics": {"configured_lr": configured, "steps": 5, "samples": 20},
        "cost": Cost(44, 42, 0.3),
        "message": f"at the configured rate {configured:g} the loss goes {start:.3g} -> ...",
        "hint": None if status == "pass" else "change the learning rate",
    }


def extra(check: str, status: str, rng: random.Random) -> dict[str, Any]:
    evidence: dict[str, Any] = {}
    if status == "fail":
        evidence["counterexample"] = (
            "Falsifying example: test_permutation(\n"
            "    batch=array([[0., 1.],\n"
            "                 [1., 0.]]),\n"
            ")"
        )
    return {
        "evidence": evidence,
        "metrics": {"examples": rng.randrange(50, 200), "max_diff": 0.0},
        "cost": Cost(40, 0, 0.2),
        "message": f"{check} held on every example" if status == "pass" else f"{check} {status}",
        "hint": None,
    }


def param_updates(status: str, rng: random.Random) -> dict[str, Any]:
    names = [f"fc{i}.{kind}" for i in range(1, 5) for kind in ("weight", "bias")]
    scale = {"pass": 5e-3, "warn": 0.8, "fail": 5e-3}.get(status, 5e-3)
    records = []
    for order, name in enumerate(names):
        zero = name.endswith("bias") and order < 2
        cause = "no_gradient" if status == "fail" and order < 4 else ""
        weight = 0.0 if zero else rng.uniform(2.0, 9.0)
        ratio = None if zero or cause else scale * rng.uniform(0.5, 2.0)
        records.append(
            {
                "name": name,
                "order": order,
                "weight_norm": weight,
                "update_norm": 0.0 if cause else (ratio or 0.01) * (weight or 1.0),
                "grad_norm": None if cause else rng.uniform(0.01, 1.0),
                "ratio": ratio,
                "cause": cause,
            }
        )
    ratios = sorted(r["ratio"] for r in records if r["ratio"] is not None)
    median = ratios[len(ratios) // 2] if ratios else None
    return {
        "evidence": {
            "tensors": records,
            "band": [1e-6, 0.2],
            "median": median,
            "reference": 1e-3,
            "optimizer": "Adam(lr=0.001) (nndiag's default)",
        },
        "metrics": {"tensors": len(records), "median_ratio": median, "steps": 3},
        "cost": Cost(3, 3, 0.05),
        "message": f"median update/weight ratio {median:.2g}" if median else "no ratio",
        "hint": None if status == "pass" else "lower the learning rate",
    }


def input_stats(status: str, rng: random.Random) -> dict[str, Any]:
    means = {"pass": (0.01, -0.02, 0.0), "warn": (0.485, 0.456, 0.406)}.get(status, (0, 0, 0))
    stds = (1.0, 0.98, 1.02) if status == "pass" else (0.229, 0.224, 0.225)
    channels = [
        {"name": f"channel {i}", "mean": m + rng.uniform(-0.005, 0.005), "std": s}
        for i, (m, s) in enumerate(zip(means, stds))
    ]
    return {
        "evidence": {
            "layout": "image",
            "unit": "channel",
            "channels": channels,
            "label_counts": [rng.randrange(40, 60) for _ in range(10)],
            "center_warn": 0.5,
            "std_low": 0.1,
            "std_high": 10.0,
        },
        "metrics": {"layout": "image", "channels": 3, "samples": 512},
        "cost": Cost(0, 0, 0.002),
        "message": "inputs are zero-centred" if status == "pass" else "inputs not centred",
        "hint": None if status == "pass" else "transforms.Normalize(mean, std)",
    }


def init_scale(status: str, rng: random.Random, names: Sequence[str] = ()) -> dict[str, Any]:
    names = list(names) or [f"fc{i}" for i in range(1, 6)]
    ratio = {"pass": 1.0, "warn": 0.25, "fail": 0.1}.get(status, 1.0)
    layers = []
    for depth, name in enumerate(names):
        target = (2 / 100) ** 0.5
        std = target * (ratio if depth else 1.0) * rng.uniform(0.95, 1.05)
        layers.append(
            {
                "name": name,
                "activation": f"{name}.relu",
                "kind": "relu",
                "depth": depth,
                "fan_in": 100,
                "std": std,
                "target": target,
                "rule": "He",
                "ratio": std / target,
                "judged": depth < len(names) - 1,
                "not_judged": None if depth < len(names) - 1 else "normalized",
                "status": status if depth and depth < len(names) - 1 else "pass",
            }
        )
    return {
        "evidence": {"layers": layers, "symmetric": [], "warn": 3.0, "fail": 10.0},
        "metrics": {"judged": len(names) - 1, "min_ratio": ratio, "max_ratio": 1.0},
        "cost": Cost(0, 0, 0.004),
        "message": f"weight std {ratio:g}x He",
        "hint": None if status == "pass" else "nn.init.kaiming_normal_(w)",
    }


BUILDERS = {
    "initial_loss": initial_loss,
    "regularization_loss": regularization_loss,
    "overfit_small": overfit_small,
    "gradient_check": gradient_check,
    "activation_stats": activation_stats,
    "dead_neurons": dead_neurons,
    "batchnorm": batchnorm,
    "param_updates": param_updates,
    "input_stats": input_stats,
    "init_scale": init_scale,
    "learning_rate": learning_rate,
}


def result(
    subject: str, check: str, status: str, rng: random.Random | None = None, **kwargs: Any
) -> CheckResult:
    """One result of ``check`` with evidence that matches ``status``."""
    rng = rng or random.Random(0)
    builder = BUILDERS.get(check)
    parts = builder(status, rng, **kwargs) if builder else extra(check, status, rng)
    if status in ("skip", "error"):
        parts["evidence"] = {}
        parts["message"] = (
            "skipped: the model has no activation layers"
            if status == "skip"
            else f"forward raised RuntimeError during {check}"
        )
    return CheckResult(
        check,
        status,
        parts["message"],
        metrics=parts["metrics"],
        evidence=parts["evidence"],
        hint=parts["hint"],
        cost=parts["cost"],
        subject=subject,
    )


def big_report(subjects: int = 20, checks: int = 10, seed: int = 0) -> Report:
    """``subjects`` x ``checks`` results, mostly passing, every status represented."""
    rng = random.Random(seed)
    ids = (KNOWN_CHECKS + EXTRA_CHECKS)[:checks]
    results = []
    for s in range(subjects):
        for c, check in enumerate(ids):
            status = rng.choices(STATUSES, weights=(70, 12, 10, 4, 4))[0]
            if s == 0:  # the first subject shows every status
                status = STATUSES[c % len(STATUSES)]
            results.append(result(f"mlp_{s:02d}", check, status, rng))
    return Report(results, meta=META)


def demo_report() -> Report:
    """Three subjects for looking at the page: healthy, broken, and a mixed one."""
    rng = random.Random(1)
    six = KNOWN_CHECKS[:6]  # the page's layout tests count these six columns
    results = [result("TwoLayerNet", check, "pass", rng) for check in six]
    broken = ("fail", "fail", "fail", "fail", "fail", "warn")
    results += [result("DeepTanhNet (std 0.01)", c, s, rng) for c, s in zip(six, broken)]
    mixed = ("warn", "pass", "pass", "warn", "warn", "skip", "fail", "error")
    results += [result("ConvNet", c, s, rng) for c, s in zip(six + EXTRA_CHECKS[:2], mixed)]
    return Report(results, meta=META)


def hostile_report() -> Report:
    """User strings that try to inject markup, in every place a user string can go."""
    bad_script, bad_img = HOSTILE
    results = [
        CheckResult(
            "initial_loss",
            "fail",
            f"message {bad_script}",
            hint=f"hint {bad_img}",
            metrics={bad_script: 1.0, "value": bad_img},
            evidence=initial_loss("fail", random.Random(0))["evidence"],
            subject=bad_script,
        ),
        result(bad_img, "activation_stats", "warn", names=[bad_script, bad_img, "a$b"]),
        result(bad_img, "dead_neurons", "fail", names=[bad_img, bad_script]),
        result(bad_img, "init_scale", "fail", names=[bad_script, bad_img, "a$b"]),
        CheckResult(
            bad_script,
            "fail",
            bad_img,
            subject=bad_img,
            evidence={"counterexample": f"f(x={bad_script!r})"},
        ),
    ]
    meta = dict(META, frameworks={bad_script: bad_img}, python=bad_img)
    return Report(results, meta=meta)
