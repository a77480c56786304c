"""``input_stats``: are the inputs zero-centred and normalized, and are the labels balanced?

Lecture 5's data preprocessing: subtract the mean (per channel for images, as for
AlexNet/VGG) and scale to unit variance; all-positive inputs make every weight's gradient
share a sign (zig-zag updates). Raw 0-255 pixels, a constant feature and a batch dominated
by one class are the common ways this goes wrong. Preprocessing is a recommendation, so
this check only warns. Data only: no forward pass.

Layouts (axes of the input array ``X``, rows first):

- ``(N,)`` and ``(N, D)``: tabular, judged per feature;
- ``(N, T, D)``: sequences, per feature (the last axis); ``(N, H, W)`` with ``H == W > 4``
  is read as one-channel images;
- ``(N, C, H, W)`` and more axes: images, per channel on axis 1; channels-last
  ``(N, H, W, C)`` when the last axis has at most 4 entries and axis 1 more (numpy/JAX
  images);
- integer inputs that are not images (``(N, T)`` token ids) and inputs that are not one
  array (a dict of token tensors) are not judged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nndiag.config import Config
from nndiag.contract import Session
from nndiag.results import CheckResult

CHECK = "input_stats"
# Values read at most (the first rows whose inputs fit): statistics of 16M values are
# exact enough, and a 512-row batch of 224x224 images would need 300 MB per copy.
MAX_VALUES = 1 << 24
MAX_SHOWN = 64  # channels / features kept in the evidence for the plot


def _layout(X: np.ndarray) -> tuple[str, int]:
    """(kind, channel axis) of ``X``; kind is ``tabular``, ``sequence`` or ``image``."""
    if X.ndim <= 2:
        return "tabular", 1
    if X.ndim == 3:
        if X.shape[1] == X.shape[2] > 4:
            return "image", -1  # (N, H, W): one channel, added below
        return "sequence", 2
    if X.shape[-1] <= 4 < X.shape[1]:
        return "image", X.ndim - 1  # channels last
    return "image", 1


def _channel_stats(X: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    axes = tuple(a for a in range(X.ndim) if a != axis)
    x = X.astype(np.float32, copy=False)
    mean = x.mean(axis=axes, dtype=np.float64)
    shape = [1] * X.ndim
    shape[axis] = X.shape[axis]
    centered = x - mean.astype(np.float32).reshape(shape)
    np.square(centered, out=centered)
    std = np.sqrt(centered.mean(axis=axes, dtype=np.float64))
    low, high = x.min(axis=axes), x.max(axis=axes)
    return {"mean": mean, "std": std, "constant": low == high}


def _binomial_tail(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k), summed in log space (n is a batch: at most a few thousand)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    logp, logq = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * logp + (n - i) * logq
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _numbers(values: Any, limit: int = 8) -> str:
    shown = [f"{v:.3g}" for v in list(values)[:limit]]
    return "(" + ", ".join(shown) + (", ..." if len(values) > limit else "") + ")"


def _reconstruction(X: np.ndarray, y: Any) -> bool:
    """Whether the targets are the inputs themselves (an autoencoder, a VAE)."""
    y = np.asarray(y)[: len(X)]  # X holds the first rows only
    if y.size != X.size or not np.issubdtype(y.dtype, np.floating):
        return False
    return bool(np.array_equal(y.reshape(-1), X.reshape(-1)))


def _labels(session: Session, y: Any, config: Config) -> dict[str, Any] | None:
    """Label balance against a uniform labelling: the largest class's count, and a union
    bound C * P(Binomial(n, 1/C) >= count) on seeing a class that large by chance."""
    task = session.task
    if task.kind != "classification" or y is None or np.ndim(y) != 1 or task.num_classes < 2:
        return None  # token-level targets: Zipf-distributed by nature, not judged
    labels = np.asarray(y).astype(np.int64)
    labels = labels[(labels >= 0) & (labels < task.num_classes)]  # -100: ignored targets
    n, classes = len(labels), task.num_classes
    if n == 0:
        return None
    counts = np.bincount(labels, minlength=classes)
    top = int(counts.argmax())
    largest = int(counts[top])
    bound = min(1.0, classes * _binomial_tail(n, 1.0 / classes, largest))
    share = largest / n
    return {
        "counts": counts,
        "samples": n,
        "classes": classes,
        "largest_class": top,
        "largest_share": share,
        "p_uniform": bound,
        "imbalanced": bound < config.input_imbalance_p
        and share >= config.input_imbalance_share / classes,
    }


def input_stats(session: Session, config: Config) -> CheckResult:
    """Warn when the inputs are not zero-centred or not unit-scaled (per channel for
    images), are raw 0-255 pixels, hold a constant feature or channel, or when one class
    dominates the labels beyond chance."""
    batch = session.rows(config.max_samples)
    X, y = session.arrays(batch)
    words = session.words
    labels = _labels(session, y, config)
    findings: list[tuple[str, str, str]] = []  # (cause, message, hint)
    metrics: dict[str, Any] = {"causes": []}
    evidence: dict[str, Any] = {
        "center_warn": config.input_center_warn,
        "std_low": config.input_std_low,
        "std_high": config.input_std_high,
    }
    skipped = None
    if X is None:
        skipped = "the inputs are not one array (e.g. a dict of token tensors)"
    elif not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        skipped = f"the inputs are {X.dtype} values"
    elif np.issubdtype(X.dtype, np.integer) and _layout(X)[0] != "image":
        skipped = f"the inputs are integers of shape {tuple(X.shape)}: token ids, not measured"
    if skipped is None and X is not None:
        rows = max(1, min(len(X), MAX_VALUES // max(1, int(np.prod(X.shape[1:])))))
        X = X[:rows]
        kind, axis = _layout(X)
        if X.ndim == 1 or (kind == "image" and X.ndim == 3):
            X = X[..., None]
            axis = X.ndim - 1
        stats = _channel_stats(X, axis)
        mean, std, constant = stats["mean"], stats["std"], stats["constant"]
        unit = "channel" if kind == "image" else "feature"
        count = len(mean)
        metrics.update(
            {
                "layout": kind,
                "channel_axis": axis,
                "samples": rows,
                unit + "s": count,
                "max_abs_mean_over_std": float(
                    np.max(np.abs(mean)[~constant] / std[~constant], initial=0.0)
                ),
                "min_std": float(std.min()),
                "max_std": float(std.max()),
            }
        )
        names = [f"{unit} {i}" for i in range(count)]
        evidence.update(
            {
                "layout": kind,
                "unit": unit,
                "channels": [
                    {"name": names[i], "mean": float(mean[i]), "std": float(std[i])}
                    for i in range(min(count, MAX_SHOWN))
                ],
                "channels_total": count,
            }
        )
        standardize = words.standardize.format(mean=_numbers(mean), std=_numbers(std))
        if count > 8:
            standardize += f" (per {unit}: the training set's {count} means and stds)"
        values = X.astype(np.float32, copy=False)
        integral = bool(np.array_equal(values, np.rint(values)))
        high, low = float(values.max()), float(values.min())
        if kind == "image" and integral and low >= 0 and 1 < high <= 255:
            metrics["raw_pixels"] = True
            findings.append(
                (
                    "raw_pixels",
                    f"the inputs are raw pixel values: integers from {low:g} to {high:g}",
                    "Scale them to [0, 1] (X / 255), then standardize per channel: "
                    + words.standardize.format(mean=_numbers(mean / 255), std=_numbers(std / 255))
                    + ".",
                )
            )
        reconstruction = _reconstruction(X, y)
        if constant.any() and not reconstruction:
            which = [names[i] for i in np.flatnonzero(constant)]
            shown = ", ".join(which[:6]) + (", ..." if len(which) > 6 else "")
            metrics["constant"] = len(which)
            findings.append(
                (
                    "constant",
                    f"{len(which)} {unit}(s) are constant over the {rows} samples read "
                    f"({shown}): they carry no information",
                    f"Drop the constant {unit}(s), or find the preprocessing step that "
                    "flattened them.",
                )
            )
        live = ~constant
        if reconstruction:
            # Standardizing the inputs, or dropping a constant pixel, would change the
            # targets the loss scores (BCE needs them in [0, 1]): they are the task's.
            metrics["reconstruction"] = True
            live = np.zeros_like(constant)
        allowance = config.input_center_warn + config.input_center_sigmas / math.sqrt(rows)
        off = live & (np.abs(mean) > allowance * std)
        if off.any() and "raw_pixels" not in metrics:
            worst = int(np.argmax(np.where(off, np.abs(mean) / np.where(live, std, 1.0), 0.0)))
            findings.append(
                (
                    "not_centered",
                    f"the inputs are not zero-centred: {int(off.sum())} of {count} {unit}(s) "
                    f"have |mean| above {allowance:.2f} std (worst {names[worst]}: mean "
                    f"{mean[worst]:.3g}, std {std[worst]:.3g}); {unit} means {_numbers(mean)}",
                    f"Subtract the per-{unit} mean and divide by the std: {standardize}.",
                )
            )
        scaled = live & ((std > config.input_std_high) | (std < config.input_std_low))
        if scaled.any() and "raw_pixels" not in metrics:
            findings.append(
                (
                    "scale",
                    f"the inputs are not normalized: {unit} stds {_numbers(std)} "
                    f"(outside {config.input_std_low:g} - {config.input_std_high:g} for "
                    f"{int(scaled.sum())} of {count})",
                    f"Divide by the per-{unit} std: {standardize}.",
                )
            )
    if labels is not None:
        metrics.update(
            {
                "label_samples": labels["samples"],
                "largest_class": labels["largest_class"],
                "largest_class_share": labels["largest_share"],
                "label_p_uniform": labels["p_uniform"],
            }
        )
        evidence["label_counts"] = [int(c) for c in labels["counts"][:MAX_SHOWN]]
        if labels["imbalanced"]:
            findings.append(
                (
                    "imbalance",
                    f"the labels are imbalanced: class {labels['largest_class']} holds "
                    f"{labels['largest_share']:.0%} of {labels['samples']} samples (uniform "
                    f"{1 / labels['classes']:.0%} of {labels['classes']} classes; chance "
                    f"under uniform labels <= {labels['p_uniform']:.1e})",
                    f"If the training set is like this batch, {words.rebalance}; if only the "
                    "batch is, shuffle the data.",
                )
            )
    if skipped is not None:
        metrics["inputs_not_judged"] = skipped
        if labels is None:
            return CheckResult(
                CHECK, "skip", f"Inputs not judged: {skipped}; no class labels to count."
            )
    metrics["causes"] = [cause for cause, _, _ in findings]
    if findings:
        metrics["cause"] = findings[0][0]
        text = "; ".join(message for _, message, _ in findings)
        return CheckResult(
            CHECK,
            "warn",
            f"{text[0].upper()}{text[1:]}.",
            metrics,
            evidence,
            " ".join(hint for _, _, hint in findings),
        )
    parts = []
    if metrics.get("reconstruction"):
        parts.append(
            "The inputs are the targets (a reconstruction): their centre and scale are the "
            "loss's to judge, not the preprocessing's."
        )
    elif skipped is None:
        parts.append(
            f"Inputs are zero-centred and unit-scaled per {evidence['unit']} "
            f"(|mean|/std at most {metrics['max_abs_mean_over_std']:.2f}, std "
            f"{metrics['min_std']:.3g} - {metrics['max_std']:.3g})."
        )
    else:
        parts.append(f"Inputs not judged: {skipped}.")
    if labels is not None:
        parts.append(
            f"Labels: the largest class holds {labels['largest_share']:.0%} of "
            f"{labels['samples']} samples ({labels['classes']} classes), within chance."
        )
    return CheckResult(CHECK, "pass", " ".join(parts), metrics, evidence)
