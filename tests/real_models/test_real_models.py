"""nndiag on real library models built from constructors (torchvision, timm, transformers):
healthy models get no ``fail`` or ``error`` from the checks trusted on them, and each
planted bug fails the check meant to catch it."""

from __future__ import annotations

import functools

import pytest
import torch

import nndiag
from tests.real_models import models

pytest.importorskip("torchvision")
pytest.importorskip("timm")
pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

SEEDS = (0, 1)

TRUSTED = (
    "initial_loss",
    "overfit_small",
    "activation_stats",
    "dead_neurons",
    "batch_independence",
    "causality",
    "numerics",
    "regularization_loss",
    "gradient_check",
    "batchnorm",
    "param_updates",
    "input_stats",
    "init_scale",
)
# Checks that must stay silent on healthy models: not even a warning.
SILENT = ("input_stats", "init_scale", "causality")

# Healthy models a trusted check wrongly fails, by (model, seed, check): nndiag bugs, each
# with nndiag's message.
KNOWN: dict[tuple[str, int, str], str] = {}

# Stock models with a real problem a check must find, at every seed, with its cause:
# (model, check) -> the causes the evidence may show.
FINDINGS: dict[tuple[str, str], tuple[str, ...]] = {
    # SqueezeNet's ReLUs (the one over the class scores, or a fire module's squeeze) die
    # under Adam 1e-3 on 16 samples, at some seeds after a spike of the loss (the LR).
    ("squeezenet1_1", "overfit_small"): ("dead_units", "lr_too_high"),
    # torchvision sizes EfficientNet's classifier by 1/sqrt(classes): large logits for 10.
    ("efficientnet_b0", "initial_loss"): ("too_high",),
}


@functools.cache
def healthy_report(name: str, seed: int) -> nndiag.Report:
    """One diagnosis per model and seed, shared by that model's per-check tests."""
    return nndiag.diagnose(
        models.HEALTHY[name](seed), checks=TRUSTED, config=nndiag.Config(seed=seed)
    )


def _cases() -> list[object]:
    cases: list[object] = []
    for name in models.HEALTHY:
        for seed in SEEDS:
            for check in TRUSTED:
                reason = KNOWN.get((name, seed, check))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                case = pytest.param(name, seed, check, id=f"{name}-{seed}-{check}", marks=marks)
                cases.append(case)
    return cases


@pytest.mark.parametrize(("name", "seed", "check"), _cases())
def test_healthy_model_passes(name: str, seed: int, check: str) -> None:
    result = healthy_report(name, seed)[check]
    finding = FINDINGS.get((name, check))
    if finding is not None:
        assert result.status == "fail", result.summary()
        assert result.metrics["cause"] in finding, result.summary()
        return
    assert result.status not in ("fail", "error"), result.summary()
    if check in SILENT:
        assert result.status in ("pass", "skip"), result.summary()


@pytest.mark.parametrize("name", list(models.BUGS))
def test_planted_bug_fails_its_check(name: str) -> None:
    factory, check = models.BUGS[name]
    result = nndiag.diagnose(factory(0), checks=[check])[check]
    assert result.status == "fail", result.summary()


@pytest.mark.parametrize("name", list(models.DATA_BUGS))
def test_planted_data_problem_warns_with_its_cause(name: str) -> None:
    factory, cause = models.DATA_BUGS[name]
    result = nndiag.diagnose(factory(0), checks=["input_stats"])["input_stats"]
    assert result.status == "warn" and result.metrics["cause"] == cause, result.summary()


@pytest.mark.parametrize(
    ("name", "cause", "layer"),
    [
        ("squeezenet_small_init", "too_small", "features."),
        ("gpt2_symmetric_mlp", "symmetric", "model.transformer.h.0.mlp.c_fc"),
    ],
)
def test_planted_init_bug_names_its_cause_and_layer(name: str, cause: str, layer: str) -> None:
    factory, _ = models.BUGS[name]
    result = nndiag.diagnose(factory(0), checks=["init_scale"])["init_scale"]
    assert result.status == "fail" and result.metrics["cause"] == cause, result.summary()
    assert result.metrics["first_bad_layer"].startswith(layer)


@pytest.mark.parametrize("name", ["resnet18", "gpt2_unwrapped"])
def test_diagnosis_leaves_model_untouched(name: str) -> None:
    subject = models.HEALTHY[name](0)
    model = subject.model
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    modes = [m.training for m in model.modules()]
    nndiag.diagnose(subject, checks=TRUSTED)
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_squeezenet_cannot_overfit_because_its_output_relu_dies() -> None:
    # A true finding: SqueezeNet's last conv feeds a ReLU on the class scores, and under
    # Adam 1e-3 on 16 samples units of it die; the cause must be named, not "plateau".
    result = healthy_report("squeezenet1_1", 0)["overfit_small"]
    assert result.metrics["cause"] == "dead_units"
    assert "classifier.2" in result.message and "dead_neurons" in (result.hint or "")


@pytest.mark.parametrize("seed", range(2))
def test_resnet18_gradient_verdict_and_cost_do_not_depend_on_how_it_is_fed(seed: int) -> None:
    # One tensor of 16, 32 or 64 rows, or loaders of 2 x 16 and 4 x 8: the check takes the
    # same 4 rows (fewer rows, fewer kinks), so the same verdict at the same cost. (32 rows
    # used to warn after 200 s: 32 rows' worth of ReLU and max-pool kinks at every step.)
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    model = models._vision("resnet18", seed)
    g = torch.Generator().manual_seed(2000 + seed)
    X = torch.randn(64, 3, models.IMAGE_SIZE, models.IMAGE_SIZE, generator=g)
    y = torch.randint(0, models.CLASSES, (64,), generator=g)
    feeds = {
        "16 rows": (X[:16], y[:16]),
        "32 rows": (X[:32], y[:32]),
        "64 rows": (X, y),
        "2 x 16": DataLoader(TensorDataset(X[:32], y[:32]), batch_size=16),
        "4 x 8": DataLoader(TensorDataset(X[:32], y[:32]), batch_size=8),
    }
    seen = set()
    for feed, data in feeds.items():
        config = nndiag.Config(seed=seed)
        result = nndiag.diagnose(nndiag.Subject(model, data), ["gradient_check"], config)
        check = result["gradient_check"]
        assert check.status == "pass", (feed, check.summary())
        assert check.metrics["rows"] == 4 and "On 4 rows" in check.message
        seen.add((check.cost.forward, check.cost.backward, check.metrics["screen_errors"][0]))
    assert len(seen) == 1, seen


def test_efficientnet_head_is_flagged_with_its_cause_and_its_gates_are_not() -> None:
    # torchvision sizes EfficientNet's classifier init by 1/sqrt(classes): with 10 classes
    # the logits at init are large (a true finding); its squeeze-excitation sigmoid gates
    # have a small spread by design (no collapse).
    report = healthy_report("efficientnet_b0", 0)
    hint = report["initial_loss"].hint or ""
    assert "classifier.1" in hint and "sized by the number of classes" in hint, hint
    assert report["activation_stats"].status == "pass", report["activation_stats"].summary()
    assert report["activation_stats"].metrics["gates_left_out"] > 0
    # Its squeeze-excitation branches are drawn with fan_out (5x He into the gate, 0.2x
    # out of it), and batch norms sit between them: no scale compounds.
    assert report["init_scale"].status == "pass", report["init_scale"].summary()


@pytest.mark.parametrize(
    ("name", "seed", "check"),
    [
        ("mobilenet_v3_small", 1, "dead_neurons"),  # half of an 8-unit SE ReLU: not "more"
        # 7 of the 8 units of a squeeze-excitation ReLU off for every sample at init (the
        # pooled inputs are alike): left out with the gate, in both checks
        ("mobilenet_v3_small", 12, "dead_neurons"),
        ("mobilenet_v3_small", 12, "activation_stats"),
        ("squeezenet1_1", 4, "activation_stats"),  # the ReLU over the class scores is small
        ("t5", 4, "overfit_small"),  # 99.6% of 256 token targets is "~100%"
        ("resnet18", 5, "gradient_check"),  # 3.4e-5 that shrank with the step: kinks
    ],
)
def test_no_warning_where_a_healthy_model_once_got_one(name: str, seed: int, check: str) -> None:
    result = nndiag.diagnose(models.HEALTHY[name](seed), [check], nndiag.Config(seed=seed))
    assert result[check].status == "pass", result[check].summary()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "timm_resnet10t"])
@pytest.mark.parametrize("seed", range(5))
def test_batchnorm_is_silent_on_healthy_batchnorm_models(name: str, seed: int) -> None:
    result = nndiag.diagnose(models.HEALTHY[name](seed), ["batchnorm"], nndiag.Config(seed=seed))
    assert result["batchnorm"].status == "pass", result["batchnorm"].summary()


def test_stale_batchnorm_in_resnet18_names_every_layer() -> None:
    result = nndiag.diagnose(models.resnet18_stale_batchnorm(0), ["batchnorm"])["batchnorm"]
    assert result.status == "fail" and result.metrics["cause"] == "stale", result.summary()
    assert len(result.metrics["stale_layers"]) == result.metrics["layers"] == 20
    assert "momentum=0.0" in result.message


# planted bug -> (cause, tensors it must name)
PARAM_UPDATE_CAUSES = {
    "resnet18_fc_after_optimizer": ("not_owned", {"fc.weight", "fc.bias"}),
    "mobilenet_features_only_optimizer": (
        "not_owned",
        {"classifier.0.weight", "classifier.3.bias"},
    ),
    "squeezenet_detached_no_gradient": (
        "no_gradient",
        {"features.0.weight", "features.6.expand3x3.bias"},
    ),
    "bert_frozen_max_norm_embeddings": (
        "frozen_changed",
        {"model.bert.embeddings.word_embeddings.weight"},
    ),
}


@pytest.mark.parametrize("name", sorted(PARAM_UPDATE_CAUSES))
def test_param_updates_names_the_cause_of_a_planted_bug(name: str) -> None:
    factory, check = models.BUGS[name]
    assert check == "param_updates"
    cause, tensors = PARAM_UPDATE_CAUSES[name]
    result = nndiag.diagnose(factory(1), [check], nndiag.Config(seed=1))[check]
    assert result.status == "fail" and result.metrics["cause"] == cause, result.summary()
    named = {r["name"] for r in result.evidence["tensors"] if r["cause"] == cause}
    assert tensors <= named, named
    if name == "squeezenet_detached_no_gradient":  # the 20 tensors below the cut, no other
        assert len(named) == 20 and named == {
            n
            for n in named
            if n.startswith(("features.0.", "features.3.", "features.4.", "features.6."))
        }
    if name == "resnet18_fc_after_optimizer":
        assert result.metrics["stale"] == 2 and "(10, 512), (10,)" in result.hint


def test_param_updates_is_silent_on_zero_init_residual_and_sgd() -> None:
    # resnet18 with zero_init_residual starts its last BN gains at 0 (no ratio, no warn);
    # SGD with momentum at 0.1 is the torchvision recipe.
    import torchvision.models

    torch.manual_seed(0)
    model = torchvision.models.resnet18(
        weights=None, num_classes=models.CLASSES, zero_init_residual=True
    )
    subject = nndiag.Subject(
        model,
        models._images(0),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    )
    result = nndiag.diagnose(subject, ["param_updates"])["param_updates"]
    assert result.status == "pass", result.summary()
    assert result.metrics["from_zero"] >= 8 + 20  # 8 zero-init BN gains, the BN biases


@pytest.mark.parametrize(
    ("name", "seed"), [("resnet18", 0), ("mobilenet_v3_small", 0), ("mobilenet_v3_small", 1)]
)
def test_learning_rate_passes_at_the_default_rate(name: str, seed: int) -> None:
    # Opt-in (a range test), so not in TRUSTED: Adam 1e-3 lies inside the range that works.
    config = nndiag.Config(seed=seed)
    result = nndiag.diagnose(models.HEALTHY[name](seed), ["learning_rate"], config)
    check = result["learning_rate"]
    assert check.status == "pass", check.summary()
    assert check.metrics["works_low"] <= 1e-3 <= check.metrics["works_high"]
    assert check.cost.backward <= 60


def test_learning_rate_10_diverges_on_a_real_model() -> None:
    result = nndiag.diagnose(models.squeezenet_lr_10(0), ["learning_rate"])["learning_rate"]
    assert result.status == "fail" and result.metrics["cause"] == "diverged", result.summary()
    assert result.metrics["works_high"] < 10.0 and "too high" in result.hint


@pytest.mark.parametrize("seed", range(6))
def test_a_one_percent_gradient_error_in_llama_fails_at_every_seed(seed: int) -> None:
    # Llama's RMSNorm, rotary embedding and softmax ask for float32: the check keeps them in
    # float64 (and says so), so the differences resolve far below 1%.
    config = nndiag.Config(seed=seed)
    result = nndiag.diagnose(models.llama_grad_one_percent(seed), ["gradient_check"], config)
    check = result["gradient_check"]
    assert check.status == "fail", check.summary()
    assert check.metrics["worst_tensor"].startswith("model.model.layers.1.mlp.up_proj")
    assert check.metrics["failed"] == 1
    assert "computed them in float64" in check.message


def test_healthy_llama_and_t5_gradients_are_float64_clean() -> None:
    for name in ("llama", "t5"):
        check = healthy_report(name, 0)["gradient_check"]
        assert check.status == "pass", check.summary()
        assert check.metrics["internal_precision"] < 1e-15  # no float32 left in the forward
        assert check.metrics["max_rel_error"] < 1e-6, check.summary()
