"""Thresholds, budgets and seeds, in one frozen object.

Every default names its source: the CS231n lecture 5 / notes ("lecture", "notes"), a cited
tool or paper, or our own calibration on the models in ``tests/models.py`` (runs across
seeds recorded in the comment).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from nndiag.checks import BUILTIN
from nndiag.errors import InvalidSetting, InvalidSettingType, describe

__all__ = ["DEFAULT_CHECKS", "Config"]

# nndiag's own checks that run by default, in registry order (see nndiag.checks).
DEFAULT_CHECKS: tuple[str, ...] = tuple(spec.id for spec in BUILTIN if spec.default)


# Fractions: shares of units, outputs or losses, or probabilities; at most 1.
_FRACTIONS = (
    "initial_loss_width_warn",
    "initial_loss_width_fail",
    "overfit_loss_ratio",
    "overfit_flat_ratio",
    "overfit_fitted_ratio",
    "overfit_partial_ratio",
    "saturation_warn",
    "saturation_fail",
    "collapse_warn",
    "collapse_fail",
    "dead_warn",
    "dead_fail",
    "batchnorm_gap_warn",
    "param_update_negligible",
    "input_imbalance_p",
    "lr_flat_fall",
    "lr_died_fail",
)
# Factors off a target either way (above or below it): above 1.
_FACTORS = ("init_scale_warn", "init_scale_fail")
# (milder, stricter) pairs: the warn threshold must be reached before the fail one.
_ORDERED = (
    ("initial_loss_warn", "initial_loss_fail"),
    ("initial_loss_width_fail", "initial_loss_width_warn"),
    ("gradient_warn", "gradient_fail"),
    ("saturation_warn", "saturation_fail"),
    ("collapse_fail", "collapse_warn"),
    ("dead_warn", "dead_fail"),
    ("overfit_fitted_ratio", "overfit_partial_ratio"),
    ("param_update_ratio_low", "param_update_ratio_high"),
    ("input_std_low", "input_std_high"),
    ("init_scale_warn", "init_scale_fail"),
)
# numpy's legacy seeding (CS231n dropout) takes seeds below 2**32.
_MAX_SEED = 2**32 - 1
_ZERO_OK = ("seed", "gradient_coordinates", "lr_extra_decades")


def _check_tuple(where: str, value: Any, strings: bool, positive: bool) -> None:
    if not isinstance(value, tuple) or not (value or strings):
        raise InvalidSettingType(
            where, f"expects a non-empty tuple, got {describe(value)}", "pass a tuple"
        )
    for item in value:
        if strings and not isinstance(item, str):
            raise InvalidSettingType(
                where, f"expects check ids (str), got {describe(item)}", "pass check ids"
            )
        if not strings and (
            isinstance(item, bool)
            or not isinstance(item, (int, float))
            or not math.isfinite(item)
            or item < 0
            or (positive and item == 0)
        ):
            kind = "positive" if positive else "non-negative"
            raise InvalidSetting(where, f"expects {kind} finite numbers, got {describe(item)}")


def _check_number(name: str, value: Any, default: Any) -> None:
    where = f"Config.{name}"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidSettingType(where, f"expects int, got {describe(value)}")
        low = 0 if name in _ZERO_OK else 1
        if value < low:
            raise InvalidSetting(where, f"must be >= {low}, got {value!r}")
        if name == "seed" and value > _MAX_SEED:
            raise InvalidSetting(
                where, f"must be below 2**32, got {value!r}", "numpy's seeding takes 32 bits"
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSettingType(where, f"expects a number, got {describe(value)}")
    if not math.isfinite(value) or value < 0:
        raise InvalidSetting(where, f"must be a finite number >= 0, got {value!r}")
    if name in _FACTORS and value <= 1:
        raise InvalidSetting(where, f"is a factor either way, above 1, got {value!r}")
    if name in _FRACTIONS and value > 1:
        raise InvalidSetting(where, f"is a fraction, at most 1, got {value!r}")


@dataclass(frozen=True)
class Config:
    """Settings of one run of the checks. Build with keywords or :meth:`from_mapping`."""

    # Seed of every generator nndiag draws from (directions, subsets, dropout masks).
    seed: int = 0
    # Batches read from an iterable ``data`` (a DataLoader): enough for stable statistics.
    # A Subject keeps at most nndiag.subject.MAX_BATCHES (8) of them; more has no effect.
    max_batches: int = 4
    # Rows used by initial_loss and the activation checks (calibration: 256 rows put the
    # PyTorch-default 10-class loss within 2.300-2.313, docs/calibration.md).
    max_samples: int = 512
    # A safety cap, in wall-clock seconds, on one check (0: none): a check past it stops
    # as a skip, "not run to the end", never a verdict. Budgets that decide verdicts
    # count work (steps, passes, rows) and are the same on every machine. Generous: the
    # default checks take seconds on resnet18, vgg11_bn about 5 minutes in all.
    check_seconds: float = 600.0

    # initial_loss: relative band around the reference losses (above: relative to the loss
    # of uniform scores, ln C; below: to the label prior's). Calibrated on tests/models.py
    # HEALTHY, seeds 0-4 (our calibration): the largest healthy excess is +16% (the
    # BatchNorm CNN; He-init MLP +12%; CS231n nets at weight scale 5e-2 +5.6%, notes); a
    # x100 last layer lands at +2200% and more. Warn and fail sit at 1.5x and 3x the
    # healthy maximum.
    initial_loss_warn: float = 0.25
    initial_loss_fail: float = 0.5
    # Plus this many standard errors of a model *at* the expected loss (classification: of
    # -log p_prior(y) over the batch's labels), never of the measured model's own losses.
    initial_loss_sigmas: float = 3.0
    # Answer leaks: a fresh model's loss below the loss of its own outputs on shuffled
    # labels by more than this fraction of it (and initial_loss_sigmas of the shuffles'
    # spread) fails, for token sequences. Our calibration (docs/calibration.md): healthy
    # models up to 4.3%; GPT-2 scoring its input tokens (the copy task) 14%. 0 turns both
    # leak rules off (targets equal to the inputs too): a deliberate copy or echo task.
    initial_loss_leak: float = 0.05
    # Output width: a classifier whose n labels all lie in 0..k-1 of its C outputs has
    # probability (k/C)^n of that under a uniform labelling; below these it warns / fails
    # (our choice: 1e-3 is rarer than 1 in 1000 runs; 1e-6 is what 30 outputs for 10-class
    # labels give with only 13 labels, (1/3)^13 = 6e-7).
    initial_loss_width_warn: float = 1e-3
    initial_loss_width_fail: float = 1e-6

    # regularization_loss: strengths swept (notes: 0 -> 1e3 must raise the loss) and the
    # smallest relative rise that counts as "raised".
    regularization_strengths: tuple[float, ...] = (0.0, 1e-3, 1.0, 1e3)
    regularization_min_rise: float = 1e-6

    # overfit_small (lecture: ~20 samples, regularization off, ~100% accuracy, loss ~0).
    overfit_samples: int = 20
    overfit_steps: int = 300
    # Default optimizer: Adam at this rate fits 20 samples in 18-22 steps (docs/calibration.md).
    overfit_lr: float = 1e-3
    # "Near zero": final loss below this fraction of the initial loss.
    overfit_loss_ratio: float = 0.02
    # Lecture: loss above 3x its start means diverging ("stop").
    overfit_diverge_factor: float = 3.0
    # ... when it stays there this many steps in a row (or at the end of the budget): a
    # spike that recovers is not divergence. Calibrated: torchvision's vgg11_bn layout on 20
    # samples of 3x32x32 under Adam 1e-3 goes 2.21 -> 119 -> 211 -> 85 -> 55 -> 13, above
    # 3x its start for 5 steps, then fits by step 141 (our calibration). 30 steps is 6x
    # that and a tenth of the default budget.
    overfit_diverge_steps: int = 30
    # At the end of the budget with the labels fitted (accuracy at the batch's ceiling),
    # the share of the loss left (final / initial, both above the batch's floor): at most
    # overfit_fitted_ratio passes (the loss fell 4x or more: fitted, only short of the
    # early-stop target), at most overfit_partial_ratio warns, above fails. Our
    # calibration: 8-32-4 ReLU MLPs with PyTorch's default init under Adam 1e-3
    # end at 100% accuracy and 0.11-0.16, still falling (7 of 8 seeds); label smoothing
    # 0.1 floors at 0.22 of ln 10, 0.2 at 0.37; a double softmax cannot go below
    # log(1 + (C-1)/e): 0.45 of ln C for C = 2, 0.63 for C = 10.
    overfit_fitted_ratio: float = 0.25
    overfit_partial_ratio: float = 0.4
    # "Barely moves": the best loss stays above this fraction of the initial loss.
    overfit_flat_ratio: float = 0.9

    # gradient_check: centered differences in float64, along directions of unit rms entry.
    # These steps are tried in order, then smaller ones by decades while winners of
    # non-smooth operations change between x+h and x-h (kinks crossed) or a disagreement
    # is to be confirmed; with a noise floor (float32 inside the model) a fixed wide
    # ladder is used instead. The notes' h ~ 1e-5 crosses kinks in a deep ReLU net even on
    # 4 rows (resnet18: 6-16 winners at 1e-6..1e-4); truncation at 1e-7 is ~1e-14.
    gradient_steps: tuple[float, ...] = (1e-7,)
    # Relative error bands: <= warn passes (clean models on a smooth segment: below 1e-7,
    # docs/calibration.md), <= fail warns, above fails (a 1% error is 1e-2).
    gradient_warn: float = 1e-6
    gradient_fail: float = 1e-4
    # Rows of the first batch the check differentiates: "fewer datapoints, fewer kinks"
    # (notes); the verdict and cost do not depend on the subject's batch size or loader.
    gradient_batch: int = 4
    # Below this, an analytic and a numeric directional derivative both count as zero.
    gradient_zero: float = 1e-10
    # The check runs at a point moved by +/- this fraction of each tensor's rms, so that
    # no unit sits exactly on a kink (zero biases behind dead units do).
    gradient_jitter: float = 1e-4
    # Single coordinates checked for evidence (largest analytic entry of the worst tensors).
    gradient_coordinates: int = 1

    # activation_stats: a layer is saturated when this fraction of its tanh/sigmoid outputs
    # sit within 1% of a rail (tanh 1.0-init: 90%, Xavier: <1%, docs/calibration.md).
    saturation_warn: float = 0.10
    saturation_fail: float = 0.30
    # Collapse: std of an activation layer over the first one's (lecture demo: 0.01-init
    # tanh 1e-6, Xavier on 10-layer ReLU 0.043, He ~1, Xavier tanh 0.36; PyTorch's default
    # init on a healthy 5-layer ReLU MLP 0.12-0.2, calibrated). Explosion: the inverse.
    collapse_warn: float = 0.1
    collapse_fail: float = 0.05
    histogram_bins: int = 40

    # dead_neurons: fraction of a layer's ReLU units at 0 for every sample. SageMaker
    # Debugger warns above 50% (strictly: half of mobilenet_v3_small's 8-unit
    # squeeze-excitation ReLU is dead at some seeds), DeepDiagnosis/AUTOTRAINER fail at 70%
    # and more; PyTorch's default init leaves up to 27% dead in a healthy 5-layer MLP
    # (docs/calibration.md).
    dead_warn: float = 0.5
    dead_fail: float = 0.7

    # batch_independence: rows of the probed batch; a gradient on another row above this
    # fraction of the row's own counts as a leak (an independent model gives exact zeros);
    # a perturbed output row may move by this much relative to its size (float rounding);
    # Hypothesis examples spent shrinking a leak to a minimal batch.
    independence_rows: int = 8
    independence_tolerance: float = 1e-6
    independence_rtol: float = 1e-5
    independence_examples: int = 30

    # causality: rows probed (the first and the last); input positions changed per row
    # (spread evenly; each alone and from there on, one forward of 2x that many copies); an
    # earlier output may move by this much relative to the outputs' size (float rounding).
    causality_rows: int = 8
    causality_positions: int = 16
    causality_rtol: float = 1e-5

    # numerics: rows watched for NaN/Inf; two eval-mode passes of one batch may differ by
    # this much relative to the outputs' size (bit-identical is expected on CPU).
    numerics_rows: int = 32
    numerics_eval_rtol: float = 1e-6

    # batchnorm: an eval-mode output row may move by this much of its size when the other
    # rows of its batch change, and two eval passes may differ by as much (healthy models
    # give exactly 0 on CPU; batch statistics in eval mode move rows by 6e-2 and more,
    # our calibration in docs/calibration.md).
    batchnorm_eval_rtol: float = 1e-4
    # Gap between the mean train-mode and eval-mode losses of the stored batches (running
    # statistics averaged over them), relative to the larger: healthy BN MLPs/CNNs and
    # resnet18 / mobilenet_v3_small at most 2.4% (4 batches of 8-32, seeds 0-4), but
    # efficientnet_b0 at 32x32 reaches 47-62% with batches of 16 (1x1 late stages: 16
    # values per channel; its large init logits amplify them); batches of one class each
    # 48-90%. The two overlap, so a gap only warns, above half the larger loss.
    batchnorm_gap_warn: float = 0.5
    # param_updates: optimizer steps measured (the subject's optimizer, else Adam at
    # overfit_lr) on this many rows: three steps, so that Adam's sign-like first step is not
    # the only one, at the cost of three forward+backward passes.
    param_update_steps: int = 3
    param_update_rows: int = 64
    # Band of the median over tensors of update/weight norm per step (notes: "somewhere
    # around 1e-3"; lower: LR too low, higher: too high). Adam moves each entry by ~lr, so
    # the ratio is ~lr / rms(w): 0.0033-0.046 under Adam 1e-3 on every tests/real_models
    # HEALTHY model at seeds 0-4 (GPT-2/Llama/BERT weights of std 0.02 at the top), SGD
    # 0.01-0.1 with momentum 1.9e-5-0.023 (our calibration, docs/calibration.md). Too
    # high: Adam 0.1 gives 0.33-2.0; too low: SGD 1e-6 gives 1.7e-10-2.8e-7. The band sits
    # 4x above the healthy maximum and 19x below the healthy minimum.
    param_update_ratio_low: float = 1e-6
    param_update_ratio_high: float = 0.2
    # A gradient below this fraction of the median tensor's is rounding left of one that
    # cancels in the forward pass, and a tensor SGD then cannot move is not "never updated"
    # (our calibration, seeds 0-4): conv biases before BatchNorm up to 2.6e-6 (tests/models
    # cnn_batchnorm under SGD), mobilenet_v3_small's BN biases that reach the next BN through
    # a conv up to 8.3e-7, BERT's attention key biases (softmax-invariant) 1e-9; the
    # smallest real gradient among the healthy models is 6.3e-4 (BERT). 11x above the
    # first, 21x below the last.
    param_update_negligible: float = 3e-5

    checks: tuple[str, ...] = DEFAULT_CHECKS

    # input_stats (lecture: zero-centre, per channel for images, and normalize). Warns when
    # a channel's |mean| exceeds input_center_warn std plus input_center_sigmas standard
    # errors of a zero mean over the rows read (our choice: torchvision's ToTensor output,
    # mean 0.5 std 0.25, sits at 2 std; an indicator feature at 10% at 0.33 std; standard
    # normal data at 0.02 - 0.3 on tests/models.py and tests/real_models, seeds 0-4).
    input_center_warn: float = 0.5
    input_center_sigmas: float = 3.0
    # ... and when a channel's std is outside [low, high] (a decade either side of 1).
    input_std_low: float = 0.1
    input_std_high: float = 10.0
    # Labels: the largest class would be this unlikely under uniform labels (union bound
    # C * P(Binomial(n, 1/C) >= count); 1e-3 is rarer than 1 run in 1000) and holds at
    # least this many times its uniform share (a large batch alone is no imbalance).
    input_imbalance_p: float = 1e-3
    input_imbalance_share: float = 1.5

    # init_scale: a layer's weight std over He sqrt(2/fan_in) (ReLU family next) or Xavier
    # 1/sqrt(fan_in) (otherwise) beyond this factor either way warns. PyTorch's default
    # (kaiming_uniform, a=sqrt(5): std 1/sqrt(3 fan_in)) is 0.41x He and 0.58x Xavier, and
    # healthy (calibrated: tests/models.py, tests/real_models, seeds 0-4); the lecture's
    # std 0.01 at fan_in 500 is 0.22x Xavier.
    init_scale_warn: float = 3.0
    # ... and consecutive such layers whose ratios multiply beyond this factor fail (one
    # layer 10x off on its own, or the lecture's 0.22x compounding to 1e-6 over 10 layers).
    init_scale_fail: float = 10.0
    # learning_rate (lecture 5, babysitting the learning process): a range test around the
    # configured rate (the subject's optimizer's, else overfit_lr) on the overfit_samples
    # batch, regularization off, every rate from the same initial weights. Factors of the
    # configured rate: powers of ten, as the lecture's coarse search steps (1e-6 barely
    # moves, 1e6 gives NaN, 3e-3 explodes; the range that works lies between).
    lr_factors: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)
    # Updates per rate (7 rates x 6 forward+backward passes: 42 on resnet18, within the
    # opt-in budget of 60).
    lr_steps: int = 5
    # "Barely moves" (lecture: "loss barely changing: learning rate probably too low"): the
    # loss fell by less than this fraction of its start over lr_steps updates; at that
    # pace 300 steps (overfit_steps) would not take 6% off it. Our calibration
    # (docs/calibration.md): healthy models at Adam 1e-3 fall by 1.7% or more in 5
    # updates (17x this); at 1e-6 by 0.06% or less, and SGD at 1e-7 by ~1e-5.
    lr_flat_fall: float = 0.001
    # A failure is re-measured by a longer run at the configured rate (on the next rows
    # when the data holds them): a spike that recovers within it is not divergence (the
    # vgg11_bn spike of overfit_diverge_steps lasts 5 steps; 20 is 4x that).
    lr_confirm_steps: int = 20
    # Lecture: "if 10-20% of the units have died after a round of training, the learning
    # rate is too high": fail at the upper end, as the share of the network's ReLU units
    # that fired before the short run at the configured rate and never after it, and again
    # after the re-measurement. Our calibration (docs/calibration.md): healthy models lose
    # at most 1.7% (default-init MLP), SqueezeNet under Adam 1e-3 up to 11.5% in the short
    # run and 8.6% re-measured (seeds 0-9: the lower end would fail it); 5-layer ReLU MLPs
    # under Adam 0.1 lose 30-53% (torch, numpy, JAX, seeds 0-4).
    lr_died_fail: float = 0.2
    # When the configured rate barely moves and no larger rate of the range moves the loss,
    # further decades above it are tried, up to this many (SGD at 1e-7 on the 5-layer MLP
    # moves the loss only from 1e-3 on, 1e4 x; our calibration).
    lr_extra_decades: int = 4
    # The opt-in training check: a short real training run of the subject, with its own
    # optimizer and data, judged by the training monitor's rules (docs/monitor.md), so a
    # team can gate on "200 steps of real training stay healthy". Steps, and every how many
    # steps the update ratios, gradients and activations are sampled (the monitor's
    # validation suite samples every 10 steps of 200).
    training_steps: int = 200
    training_every: int = 10

    def __post_init__(self) -> None:
        defaults = Config.__dataclass_fields__
        for f in fields(self):
            value, default = getattr(self, f.name), defaults[f.name].default
            if isinstance(default, tuple):
                _check_tuple(
                    f"Config.{f.name}",
                    value,
                    strings=f.name == "checks",
                    positive=f.name in ("gradient_steps", "lr_factors"),
                )
            else:
                _check_number(f.name, value, default)
        for milder, stricter in _ORDERED:
            a, b = getattr(self, milder), getattr(self, stricter)
            if a > b:
                raise InvalidSetting(
                    f"Config.{milder}",
                    f"{a!r} is past {stricter} = {b!r}: the warning would never come first",
                    f"keep {milder} <= {stricter}"
                    if "fail" in stricter or "partial" in stricter
                    else f"keep {stricter} >= {milder}",
                )

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated like :meth:`from_mapping`)."""
        return self.from_mapping(changes, base=self)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], base: Config | None = None) -> Config:
        """Build from ``[tool.nndiag]``-style keys; unknown keys raise with the known ones.

        Raises:
            ValueError: an unknown key, or a value of the wrong type.
        """
        base = base or cls()
        known = {f.name: f for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in options.items():
            name = key.replace("-", "_")
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                raise InvalidSetting(
                    key,
                    f"unknown nndiag option {key!r}; known options: {', '.join(sorted(known))}",
                    f"did you mean {close[0]!r}?" if close else "",
                )
            default = getattr(base, name)
            if isinstance(default, tuple):
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, (list, tuple)):
                    raise InvalidSettingType(
                        key, f"nndiag option {key!r} expects a list, got {describe(value)}"
                    )
                value = tuple(value)
            elif (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            elif type(value) is not type(default):
                raise InvalidSettingType(
                    key,
                    f"nndiag option {key!r} expects {type(default).__name__}, got "
                    f"{describe(value)}",
                )
            changes[name] = value
        return dataclasses.replace(base, **changes)
