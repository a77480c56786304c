"""The JAX backend: ``(apply_fn, params)`` pairs get the same checks and the same verdicts."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import nndiag  # noqa: E402
from nndiag.backends import backend_for  # noqa: E402
from nndiag.errors import InvalidSubject, ModelError, NndiagError  # noqa: E402
from tests.backends import jax_models as M  # noqa: E402

SEEDS = (0, 1, 2)


def _check(subject: nndiag.Subject, check: str) -> nndiag.CheckResult:
    return nndiag.diagnose(subject, [check])[check]


# -- verdicts ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(M.HEALTHY))
def test_healthy_jax_models_pass_every_check(name: str, seed: int) -> None:
    report = nndiag.diagnose(M.HEALTHY[name](seed), config=nndiag.Config(seed=seed))
    bad = [r.summary() for r in report if r.status not in ("pass", "skip")]
    assert not bad, "\n".join(bad)
    assert report.passed


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(M.BROKEN))
def test_broken_jax_models_fail_their_check(name: str, seed: int) -> None:
    build, check = M.BROKEN[name]
    result = nndiag.diagnose(build(seed), [check], nndiag.Config(seed=seed))[check]
    assert result.status == "fail", result.summary()
    assert result.hint


def test_stop_gradient_is_named_as_a_cut_graph() -> None:
    result = _check(M.stop_gradient(0), "gradient_check")
    assert result.metrics["worst_tensor"].startswith("layers/0/")
    assert "No gradient reaches layers/0/W, layers/0/b" in result.hint
    assert [t["no_grad"] for t in result.evidence["tensors"]] == [True, True, False, False]


def test_wrong_custom_vjp_is_localized_to_the_layer_before_it() -> None:
    result = _check(M.wrong_backward(0), "gradient_check")
    failed = {t["name"] for t in result.evidence["tensors"] if t["status"] == "fail"}
    assert failed and failed <= {"layers/0/W", "layers/0/b"}
    assert "backward" in result.hint


def test_float32_params_are_checked_in_float64_and_said_so() -> None:
    result = _check(M.he_relu_mlp(0), "gradient_check")
    assert result.status == "pass" and result.metrics["max_rel_error"] < 1e-6
    assert "float32: checked on a float64 copy" in result.message
    assert result.cost.backward == 1


def test_tensors_are_named_by_pytree_path_and_integer_leaves_are_left_alone() -> None:
    params = M.init_mlp(0, 2, M.he)
    params["step"] = jnp.asarray(7)  # an integer leaf: not trainable, still passed along
    apply = M.mlp(jax.nn.relu)
    seen_steps: list[str] = []

    def apply_checked(p: Any, x: jax.Array) -> jax.Array:
        seen_steps.append(p["step"].dtype.kind)
        return apply(p, x)

    result = _check(nndiag.Subject((apply_checked, params), M.classification(0)), "gradient_check")
    assert [t["name"] for t in result.evidence["tensors"]] == [
        "layers/0/W",
        "layers/0/b",
        "layers/1/W",
        "layers/1/b",
    ]
    assert set(seen_steps) == {"i"}


def test_a_single_array_of_params_is_named_params() -> None:
    X = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = (X @ np.arange(4.0, dtype=np.float32))[:, None]
    W = jnp.zeros((4, 1))
    result = _check(nndiag.Subject((lambda w, x: x @ w, W), (X, y)), "gradient_check")
    assert result.status == "pass" and result.evidence["tensors"][0]["name"] == "params"


# -- training, regularization ------------------------------------------------------------
def test_penalty_knob_is_scaled_by_the_strength() -> None:
    result = _check(M.l2_mlp(0), "regularization_loss")
    assert result.status == "pass"
    losses = result.evidence["losses"]
    penalty = float(M.l2_penalty(M.init_mlp(0, 3, M.he)))
    assert losses[-1] - losses[0] == pytest.approx(1e3 * penalty, rel=1e-4)


def test_overfit_counts_one_forward_and_backward_per_step() -> None:
    result = _check(M.he_relu_mlp(0), "overfit_small")
    assert result.status == "pass"
    assert result.cost.forward == result.cost.backward == result.metrics["steps"]
    assert result.metrics["optimizer"] == "Adam(lr=0.001) (nndiag's default)"


class _SGD(NamedTuple):
    """The shape of an optax GradientTransformation, without optax."""

    init: Callable[[Any], Any]
    update: Callable[..., Any]


def _sgd(lr: float) -> _SGD:
    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return jax.tree_util.tree_map(lambda g: -lr * g, grads), state

    return _SGD(lambda params: (), update)


def test_an_optax_style_optimizer_is_used_as_given() -> None:
    subject = nndiag.Subject(
        (M.mlp(jax.nn.relu), M.init_mlp(0, 3, M.he)), M.classification(0), optimizer=_sgd(1e3)
    )
    result = _check(subject, "overfit_small")
    assert result.status == "fail" and result.metrics["cause"] == "lr_too_high"
    assert "the subject's optax optimizer" in result.metrics["optimizer"]


def test_a_function_jit_cannot_trace_runs_eagerly() -> None:
    def guarded(params: Any, x: jax.Array) -> jax.Array:
        if float(jnp.abs(x).max()) > 1e6:  # Python control flow on the input's values
            raise ValueError("input out of range")
        return x @ params["W"]

    subject = nndiag.Subject((guarded, {"W": jnp.zeros((M.IN, M.CLASSES))}), M.classification(0))
    report = nndiag.diagnose(
        subject,
        ["overfit_small", "gradient_check", "activation_stats"],
        nndiag.Config(overfit_steps=10),
    )
    # 10 steps of nndiag's Adam do not fit it; another rate, tried next, does (eagerly).
    assert report["overfit_small"].status == "pass", report["overfit_small"].summary()
    assert report["overfit_small"].metrics["default_cause"] is not None
    assert report["overfit_small"].cost.backward > 10
    assert report["gradient_check"].status == "pass"
    # Capture traces apply_fn abstractly: a function that cannot be traced says so.
    assert report["activation_stats"].status == "error"
    assert "apply_fn(params, X)" in report["activation_stats"].message


# -- activation capture ------------------------------------------------------------------
def _layers(subject: nndiag.Subject) -> list[dict[str, Any]]:
    return _check(subject, "activation_stats").evidence["layers"]


def _mixed(params: Any, x: jax.Array) -> jax.Array:
    a, b, c, d, e = params["layers"]
    h = jax.nn.relu(x @ a["W"] + a["b"])
    h = jnp.tanh(h @ b["W"] + b["b"])
    h = jax.nn.sigmoid(h @ c["W"] + c["b"])
    h = jnp.maximum(h @ d["W"].T.T + d["b"], 0.0)  # a hand-written ReLU, weight transposed
    return h @ e["W"] + e["b"]


def test_capture_records_each_activation_with_kind_order_and_weight() -> None:
    params = M.init_mlp(0, 5, M.xavier)
    layers = _layers(nndiag.Subject((_mixed, params), M.classification(0)))
    assert [(x["name"], x["kind"]) for x in layers] == [
        ("relu", "relu"),
        ("tanh", "tanh"),
        ("sigmoid", "sigmoid"),
        ("relu#2", "relu"),
    ]
    assert [x["weight_layer"] for x in layers] == [f"layers/{i}/W" for i in range(4)]
    W0 = np.asarray(params["layers"][0]["W"])
    assert layers[0]["weight_std"] == pytest.approx(float(W0.std()), rel=1e-6)
    assert layers[0]["recommended_std"] == pytest.approx(math.sqrt(2 / M.IN))


def test_statistics_match_a_direct_computation() -> None:
    params = M.init_mlp(0, 5, M.xavier)
    X, _ = M.classification(0)
    a, b = params["layers"][:2]
    expected = np.asarray(jnp.tanh(jax.nn.relu(X @ a["W"] + a["b"]) @ b["W"] + b["b"]))
    layer = _layers(nndiag.Subject((_mixed, params), M.classification(0)))[1]
    assert layer["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert layer["std"] == pytest.approx(float(expected.std()), rel=1e-5)
    assert layer["saturated"] == pytest.approx(float((np.abs(expected) > 0.99).mean()))
    assert 0 < sum(layer["hist_counts"]) <= expected.size


def test_capture_enters_jit_and_named_scopes() -> None:
    body = M.mlp(jax.nn.relu)

    @jax.jit
    def apply(params: Any, x: jax.Array) -> jax.Array:
        with jax.named_scope("encoder"):
            return body(params, x)

    layers = _layers(nndiag.Subject((apply, M.init_mlp(0, 3, M.he)), M.classification(0)))
    assert [x["name"] for x in layers] == ["encoder/relu", "encoder/relu#2"]
    assert layers[1]["weight_layer"] == "layers/1/W"
    assert layers[1]["recommended_std"] == pytest.approx(math.sqrt(2 / M.WIDTH))


def test_composite_activations_are_recorded_whole_not_by_their_insides() -> None:
    def apply(params: Any, x: jax.Array) -> jax.Array:
        a, b, c, d = params["layers"]
        h = jax.nn.gelu(x @ a["W"] + a["b"])  # traced inline: its tanh is not a layer
        h = jax.nn.silu(h @ b["W"] + b["b"])  # its sigmoid is not either
        h = jax.nn.softplus(h @ c["W"] + c["b"])
        return h @ d["W"] + d["b"]

    layers = _layers(nndiag.Subject((apply, M.init_mlp(0, 4, M.he)), M.classification(0)))
    assert [(x["name"], x["kind"]) for x in layers] == [
        ("gelu", "gelu"),
        ("silu", "silu"),
        ("softplus", "softplus"),
    ]
    X, _ = M.classification(0)
    a = M.init_mlp(0, 4, M.he)["layers"][0]
    expected = np.asarray(jax.nn.gelu(X @ a["W"] + a["b"]))
    assert layers[0]["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)


@pytest.mark.parametrize("layout", [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")])
def test_convolution_units_are_channels_and_fan_in_spans_the_kernel(
    layout: tuple[str, str, str],
) -> None:
    rng = np.random.default_rng(0)
    channels_last = layout[0] == "NHWC"
    kernel = rng.normal(0, math.sqrt(2 / 27), (3, 3, 3, 8) if channels_last else (8, 3, 3, 3))
    params = {
        "conv": {"W": jnp.asarray(kernel, jnp.float32)},
        "fc": {"W": jnp.asarray(rng.normal(0, 0.1, (8, M.CLASSES)), jnp.float32)},
    }
    X = rng.normal(size=(16, 6, 6, 3) if channels_last else (16, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, M.CLASSES, 16)

    def apply(p: Any, x: jax.Array) -> jax.Array:
        h = jax.lax.conv_general_dilated(
            x, p["conv"]["W"], (1, 1), "SAME", dimension_numbers=layout
        )
        h = jax.nn.relu(h)
        return h.mean(axis=(1, 2) if channels_last else (2, 3)) @ p["fc"]["W"]

    report = nndiag.diagnose(
        nndiag.Subject((apply, params), (X, y)), ["activation_stats", "dead_neurons"]
    )
    layer = report["activation_stats"].evidence["layers"][0]
    assert layer["weight_layer"] == "conv/W" and layer["units"] == 8
    assert layer["recommended_std"] == pytest.approx(math.sqrt(2 / 27))
    assert report["dead_neurons"].evidence["layers"][0]["units"] == 8


def test_einsum_weights_are_followed_into_its_jit() -> None:
    def apply(p: Any, x: jax.Array) -> jax.Array:
        a, b = p["layers"]
        return jnp.einsum("ni,io->no", jnp.tanh(jnp.einsum("ni,io->no", x, a["W"])), b["W"])

    layers = _layers(
        nndiag.Subject((apply, M.init_mlp(0, 2, M.xavier, bias=False)), M.classification(0))
    )
    assert [(x["name"], x["weight_layer"]) for x in layers] == [("tanh", "layers/0/W")]


def test_a_clamp_at_zero_inside_an_installed_library_is_not_a_relu(tmp_path: Any) -> None:
    import importlib.util

    folder = tmp_path / "site-packages"
    folder.mkdir()
    (folder / "normlib.py").write_text(
        "import jax.numpy as jnp\n\n"
        "def variance(x):\n"
        "    return jnp.maximum(jnp.mean(x * x, -1, keepdims=True), 0.0)\n"
    )
    spec = importlib.util.spec_from_file_location("normlib", folder / "normlib.py")
    assert spec is not None and spec.loader is not None
    normlib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(normlib)

    def apply(p: Any, x: jax.Array) -> jax.Array:
        a, b = p["layers"]
        h = x @ a["W"] + a["b"]
        h = jax.nn.relu(h / jnp.sqrt(normlib.variance(h) + 1e-5))
        return h @ b["W"] + b["b"]

    layers = _layers(nndiag.Subject((apply, M.init_mlp(0, 2, M.he)), M.classification(0)))
    assert [x["name"] for x in layers] == ["relu"]


def test_dead_fraction_per_layer_matches_a_direct_count() -> None:
    params = M.init_mlp(0, 3, M.he, width=50)
    params["layers"][1]["b"] = params["layers"][1]["b"].at[:30].set(-50.0)
    X, _ = M.classification(0)
    a, b = params["layers"][:2]
    hidden = jax.nn.relu(jax.nn.relu(X @ a["W"] + a["b"]) @ b["W"] + b["b"])
    expected = int((np.asarray(hidden) <= 0).all(0).sum())
    result = _check(
        nndiag.Subject((M.mlp(jax.nn.relu), params), M.classification(0)), "dead_neurons"
    )
    rows = {r["name"]: r for r in result.evidence["layers"]}
    assert rows["relu#2"]["dead"] == expected >= 30
    assert result.status == ("fail" if expected / 50 >= 0.7 else "warn")


def test_no_activation_function_skips() -> None:
    params = {"W": jnp.zeros((M.IN, M.CLASSES))}
    report = nndiag.diagnose(
        nndiag.Subject((lambda p, x: x @ p["W"], params), M.classification(0)),
        ["activation_stats", "dead_neurons"],
    )
    assert report["activation_stats"].status == "skip"
    assert report["dead_neurons"].status == "skip"


# -- isolation ---------------------------------------------------------------------------
def _state(params: Any) -> list[tuple[str, Any, np.ndarray, int]]:
    return [
        (jax.tree_util.keystr(path), leaf.dtype, np.array(leaf), id(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    ]


def test_diagnosis_leaves_params_x64_holder_and_rngs_untouched() -> None:
    subject, holder = M.holder_subject(0)
    params = subject.model[1]
    params["layers"][0]["W"] = np.asarray(params["layers"][0]["W"])  # a numpy leaf too
    np.random.seed(7)
    random.seed(5)
    before = _state(params)
    numpy_rng, python_rng = np.random.get_state()[1].copy(), random.getstate()
    x64 = jax.config.jax_enable_x64
    report = nndiag.diagnose(subject)
    assert report.passed, [r.summary() for r in report]
    after = _state(params)
    assert [(p, d, i) for p, d, _, i in before] == [(p, d, i) for p, d, _, i in after]
    for (path, _, b, _), (_, _, a, _) in zip(before, after):
        assert np.array_equal(b.view(np.uint8), a.view(np.uint8)), path
    assert holder == {"l2": 1e-4}
    assert np.array_equal(np.random.get_state()[1], numpy_rng)
    assert random.getstate() == python_rng
    assert jax.config.jax_enable_x64 == x64
    assert jnp.zeros(1).dtype == (jnp.float64 if x64 else jnp.float32)


def test_reading_an_iterable_of_batches_leaves_the_global_rng_alone() -> None:
    X, y = M.classification(0, n=64)

    def shuffled() -> Any:
        order = np.random.permutation(64)
        for i in range(0, 64, 16):
            yield X[order[i : i + 16]], y[order[i : i + 16]]

    state = np.random.get_state()[1].copy()
    subject = nndiag.Subject((M.mlp(jax.nn.relu), M.init_mlp(0, 3, M.he)), shuffled())
    assert np.array_equal(state, np.random.get_state()[1])
    assert len(subject.batches) == 4 and subject.num_samples == 64
    assert isinstance(subject.batches[0].X, jax.Array)


# -- misuse ------------------------------------------------------------------------------
X, Y = M.classification(0, n=16, features=4)
Y = Y % 3


def _model() -> tuple[Callable[..., Any], Any]:
    return M.mlp(jax.nn.relu), M.init_mlp(0, 2, M.he, width=8, features=4, out=3)


def _raises(params: Any, x: jax.Array) -> jax.Array:
    raise RuntimeError("shapes do not match")


def _nan_data() -> tuple[np.ndarray, np.ndarray]:
    x = X.copy()
    x[3, 1] = np.nan
    return x, Y


def _labels(offset: int) -> Callable[[], Any]:
    return lambda: nndiag.diagnose(nndiag.Subject(_model(), (X, Y + offset)))


CASES: list[tuple[str, Callable[[], Any], str, str]] = [
    ("no data", lambda: nndiag.Subject(_model(), None), "data", "got None"),
    ("empty iterable", lambda: nndiag.Subject(_model(), []), "data", "no batch"),
    ("empty batch", lambda: nndiag.Subject(_model(), (X[:0], Y[:0])), "data", "empty"),
    ("not a pair", lambda: nndiag.Subject(_model(), [X]), "data", "pair (X, y)"),
    (
        "length mismatch",
        lambda: nndiag.Subject(_model(), (X, Y[:10])),
        "data",
        "16 samples but y has 10",
    ),
    ("NaN in the data", lambda: nndiag.Subject(_model(), _nan_data()), "data", "NaN"),
    (
        "lists, not arrays",
        lambda: nndiag.Subject(_model(), [(X.tolist(), Y.tolist())]),
        "data",
        "not an array",
    ),
    (
        "params not arrays",
        lambda: nndiag.Subject((_model()[0], {"W": [[1.0]]}), (X, Y)),
        "model",
        "no nndiag backend",
    ),
    (
        "no float params",
        lambda: nndiag.Subject((_model()[0], {"W": jnp.zeros(3, int)}), (X, Y)),
        "model",
        "no floating-point",
    ),
    (
        "knob is a name",
        lambda: nndiag.Subject(_model(), (X, Y), regularization="l2"),
        "regularization",
        "no attribute 'l2'",
    ),
    (
        "bad optimizer",
        lambda: nndiag.Subject(_model(), (X, Y), optimizer=0.1),
        "optimizer",
        "optax GradientTransformation",
    ),
    ("labels out of range", _labels(5), "data", "labels span 5..7 but the model outputs 3"),
    ("negative labels", _labels(-1), "data", "labels span -1..1"),
    (
        "apply raises",
        lambda: nndiag.diagnose(nndiag.Subject((_raises, _model()[1]), (X, Y))),
        "model",
        "apply_fn(params, X) raised RuntimeError: shapes do not match",
    ),
    (
        "apply returns a tuple",
        lambda: nndiag.diagnose(nndiag.Subject((lambda p, x: (x, x), _model()[1]), (X, Y))),
        "model",
        "not an array",
    ),
    (
        "scores of the wrong shape",
        lambda: nndiag.diagnose(nndiag.Subject((lambda p, x: x.sum(1), _model()[1]), (X, Y))),
        "data",
        "class scores of shape",
    ),
    (
        "non-scalar loss",
        lambda: nndiag.diagnose(nndiag.Subject(_model(), (X, Y), loss=lambda out, y: out)),
        "loss",
        "not a scalar",
    ),
    (
        "loss raises",
        lambda: nndiag.diagnose(nndiag.Subject(_model(), (X, Y), loss=lambda out, y: out @ y)),
        "loss",
        "loss(outputs, y) raised",
    ),
]


@pytest.mark.parametrize("case, run, argument, words", CASES, ids=[c[0] for c in CASES])
def test_misuse_names_argument_and_fix(
    case: str, run: Callable[[], Any], argument: str, words: str
) -> None:
    with pytest.raises(InvalidSubject) as info:
        run()
    error = info.value
    assert isinstance(error, NndiagError)
    assert error.argument == argument
    assert words in str(error)
    assert error.fix and "Fix:" in str(error)


def test_model_errors_say_which_call_and_when() -> None:
    with pytest.raises(ModelError) as info:
        nndiag.diagnose(nndiag.Subject((_raises, _model()[1]), (X, Y)))
    assert info.value.call == "apply_fn(params, X)" and info.value.check == "validation"


def test_only_apply_params_pairs_are_taken() -> None:
    apply, params = _model()
    assert backend_for((apply, params)).name == "jax"
    assert backend_for((apply, {"W": np.zeros((2, 2))})).name == "jax"  # numpy leaves
    for model in [
        (params, apply),
        (apply,),
        (apply, params, 1),
        [apply, params],
        (apply, {}),
        (apply, {"W": 1.0}),
    ]:
        with pytest.raises(InvalidSubject):
            backend_for(model)


def test_default_name_comes_from_the_apply_function() -> None:
    from nndiag.backends.jax import BACKEND

    apply, params = _model()
    assert BACKEND.default_name((apply, params)) == "apply"
    assert BACKEND.default_name((lambda p, x: x, params)) == "jax_model"


def test_regression_outputs_n_by_1_for_targets_n() -> None:
    rng = np.random.default_rng(0)
    Xr = rng.normal(size=(64, 8)).astype(np.float32)
    yr = Xr[:, 0].copy()
    model = (M.mlp(jax.nn.relu), M.init_mlp(0, 3, None, features=8, out=1))
    result = _check(nndiag.Subject(model, (Xr, yr)), "initial_loss")
    assert result.status == "pass", result.summary()


# -- parity with the torch backend -------------------------------------------------------
def test_same_network_same_verdicts_as_torch() -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: OpenMP threads only contend on a busy machine
    try:
        _compare_with_torch(torch)
    finally:
        torch.set_num_threads(threads)


def _compare_with_torch(torch: Any) -> None:
    params = M.init_mlp(0, 4, M.he)
    params["layers"][2]["b"] = params["layers"][2]["b"].at[:40].set(-3.0)  # some dead units
    X, y = M.classification(0)
    layers: list[Any] = []
    for i, layer in enumerate(params["layers"]):
        linear = torch.nn.Linear(*layer["W"].shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(layer["W"]).T))
            linear.bias.copy_(torch.from_numpy(np.array(layer["b"])))
        layers += [linear] if i == len(params["layers"]) - 1 else [linear, torch.nn.ReLU()]
    torch_report = nndiag.diagnose(nndiag.Subject(torch.nn.Sequential(*layers), (X, y)))
    jax_report = nndiag.diagnose(nndiag.Subject((M.mlp(jax.nn.relu), params), (X, y)))
    assert [(r.check, r.status) for r in jax_report] == [(r.check, r.status) for r in torch_report]
    assert jax_report["initial_loss"].metrics["measured"] == pytest.approx(
        torch_report["initial_loss"].metrics["measured"], abs=1e-5
    )
    ours = jax_report["activation_stats"].evidence["layers"]
    theirs = torch_report["activation_stats"].evidence["layers"]
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert a["std"] == pytest.approx(b["std"], abs=1e-4)
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-4)
        assert a["weight_std"] == pytest.approx(b["weight_std"], rel=1e-5)
    dead = [r["dead_fraction"] for r in jax_report["dead_neurons"].evidence["layers"]]
    assert dead == [r["dead_fraction"] for r in torch_report["dead_neurons"].evidence["layers"]]
    assert dead[2] > 0


# -- batch independence, numerics --------------------------------------------------------
def test_a_healthy_mlp_passes_batch_independence_and_numerics() -> None:
    report = nndiag.diagnose(M.he_relu_mlp(0), checks=["batch_independence", "numerics"])
    assert report["batch_independence"].status == "pass", report["batch_independence"].summary()
    assert report["numerics"].status == "pass", report["numerics"].summary()


def test_a_softmax_over_the_batch_fails_batch_independence() -> None:
    W = jnp.asarray(np.random.default_rng(0).normal(0, 0.3, (M.IN, M.CLASSES)), jnp.float32)

    def apply(p: Any, x: jax.Array) -> jax.Array:
        return jax.nn.softmax(x @ p["W"], axis=0)  # normalizes across the samples

    result = _check(nndiag.Subject((apply, {"W": W}), M.classification(0)), "batch_independence")
    assert result.status == "fail", result.summary()
    assert result.metrics["row"] != result.metrics["source_row"]


def test_log_of_an_underflowing_softmax_is_named_at_the_log() -> None:
    params = M.init_mlp(0, 2, M.he)
    body = M.mlp(jax.nn.relu)

    def apply(p: Any, x: jax.Array) -> jax.Array:
        return jnp.log(jax.nn.softmax(body(p, x) * 1e4))  # exp underflows to 0, log to -inf

    result = _check(nndiag.Subject((apply, params), M.classification(0)), "numerics")
    assert result.status == "fail", result.summary()
    assert result.metrics["op"] == "log"
    assert result.metrics["stage"] == "forward"


def test_arrays_are_the_data_in_numpy() -> None:
    X, y = M.classification(0)
    subject = nndiag.Subject((M.mlp(jax.nn.relu), M.init_mlp(0, 3, M.he)), (X, y))
    session = subject.backend.session(subject, nndiag.Config())
    got_X, got_y = session.arrays(session.rows(len(y)))
    assert isinstance(got_X, np.ndarray) and isinstance(got_y, np.ndarray)
    assert got_X.dtype == np.float32
    assert np.array_equal(got_X, X) and np.array_equal(got_y, y)


def test_gradient_check_runs_again_at_a_penalty_strength_above_zero() -> None:
    result = nndiag.diagnose(M.l2_mlp(0), ["gradient_check"])["gradient_check"]
    assert result.status == "pass", result.summary()
    assert result.metrics["checked_strength"] > 0


@pytest.mark.parametrize(
    ("targets", "words"),
    [
        (lambda y: y.astype(np.float32), "look like class ids"),
        (lambda y: np.eye(M.CLASSES, dtype=np.float32)[y], "one-hot rows"),
    ],
    ids=["float class ids", "one-hot"],
)
def test_labels_given_as_floats_are_refused_with_the_fix(
    targets: Callable[[np.ndarray], np.ndarray], words: str
) -> None:
    X, y = M.classification(0)
    model = M.he_relu_mlp(0).model
    with pytest.raises(InvalidSubject) as info:
        nndiag.diagnose(nndiag.Subject(model, (X, targets(y))), ["initial_loss"])
    assert info.value.argument == "data" and words in str(info.value)


def test_int8_labels_are_class_ids() -> None:
    X, y = M.classification(0)
    report = nndiag.diagnose(nndiag.Subject(M.he_relu_mlp(0).model, (X, y.astype(np.int8))))
    assert report["initial_loss"].status == "pass", report["initial_loss"].summary()
