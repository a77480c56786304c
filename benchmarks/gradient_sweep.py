"""Does ``gradient_check`` catch a gradient 1% (or 10%) off in any single parameter tensor?

    OMP_NUM_THREADS=1 python benchmarks/gradient_sweep.py --models relu_mlp,conv_bn_cnn \\
        --factors 1.01,1.1 --seeds 0 [--k 12] [--width 64] [--gradcheck] [--out docs/sweep.md]
        [--json sweep.json]

For each model, seed, position and factor: the model is copied, one tensor's gradient is
scaled by the factor (``handwritten.plant``: identity forward, scaled backward), and
``nndiag.diagnose(subject, checks=["gradient_check"], config=Config(seed=seed))`` runs on
it. Each row records the status, whether the failed tensors (``metrics["worst_tensor"]``,
the evidence's ``tensors`` rows with status ``fail``) name the planted one, the tensor's
share of the gradient norm (one float64 backward of the unplanted model in the check's
modes: a tensor with share < 1e-9, e.g. a convolution bias right before batch norm, cannot
show a scale error and counts as n/a, not a miss), the wall seconds of ``diagnose`` and
the check's own seconds over one float32 forward+backward of the same (unplanted) subject
measured in the same run. The unplanted model runs too.

``--gradcheck`` also runs ``torch.autograd.gradcheck(fast_mode=True)`` on each planted
model and the unplanted one: a float64 copy, the loss as a function of every trainable
tensor (``torch.func.functional_call``), on the batch's first 4 rows, in the check's modes
(batch norm on batch statistics, everything else in eval mode). A fast-mode failure
recomputes full Jacobians in slow mode for its message (59k forward passes on a 59k
parameter MLP); that message is skipped here (``_run_slow_mode_and_get_error`` replaced),
so the seconds are those of the fast check itself. gradcheck stops at the first input
whose Jacobian product disagrees: that input is the tensor it names.

Models: ``resnet18``, ``mobilenet_v3_small``, ``efficientnet_b0``, ``gpt2``, ``llama``
(tests/real_models/models.py) and ``cifar_resnet18``, ``conv_bn_cnn``, ``relu_mlp``
(tests/real_models/handwritten.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: 2 threads are 10-50x slower
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is built from a config

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import unittest.mock  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import nndiag  # noqa: E402
import tests.real_models._torchvision  # noqa: E402, F401  (before torchvision, timm, transformers)
from tests.real_models import handwritten, models  # noqa: E402
from tests.real_models.handwritten import Factory  # noqa: E402

torch.set_num_threads(1)

CHECK = "gradient_check"
ZERO_SHARE = handwritten.ZERO_SHARE  # below this share of the gradient norm: n/a
GRADCHECK_ROWS = 4
_WARM: list[str] = []  # the model the process warmed up on

LIBRARY: dict[str, Factory] = {
    "resnet18": models.resnet18,
    "mobilenet_v3_small": models.mobilenet_v3_small,
    "efficientnet_b0": models.efficientnet_b0,
    "gpt2": models.gpt2,
    "llama": models.llama,
}
MODELS: dict[str, Factory] = {**LIBRARY, **handwritten.HANDWRITTEN}


@dataclass
class Run:
    """One diagnosis: a planted position and factor, or the healthy model (position "")."""

    model: str
    seed: int
    position: str
    factor: float
    share: float
    status: str
    named: str  # worst / listed / other / - (see handwritten.named)
    worst: str | None
    failed: list[str]
    seconds: float  # wall seconds of diagnose()
    ratio: float  # the check's seconds over one float32 forward+backward
    message: str = ""
    gradcheck: str = ""  # "" (not run), pass, fail, error
    gradcheck_named: str = ""  # the tensor gradcheck's first mismatch is for
    gradcheck_seconds: float = 0.0

    @property
    def applicable(self) -> bool:
        return self.share >= ZERO_SHARE

    @property
    def caught(self) -> bool:
        return self.status == "fail" and self.named in ("worst", "listed")


def forward_backward_seconds(subject: nndiag.Subject) -> float:
    """Median seconds of one float32 forward+backward of the subject's first batch (train
    mode, as a training step), on a copy: after a warm-up call, at least 5 calls and at
    least 0.5 s of them (at most 50), so a millisecond MLP is timed as steadily as a
    ResNet."""
    model = copy.deepcopy(subject.model).float().train()
    batch = subject.batches[0]
    times: list[float] = []
    for i in range(51):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        handwritten.loss_of(subject, model(batch.X), batch.y).backward()
        if i:
            times.append(time.perf_counter() - start)
        if len(times) >= 5 and sum(times) >= 0.5:
            break
    return statistics.median(times)


def diagnose(
    subject: nndiag.Subject, seed: int, position: str, factor: float, share: float, fb: float
) -> Run:
    start = time.perf_counter()
    where = dict(model=subject.name, seed=seed, position=position, factor=factor, share=share)
    try:
        result = nndiag.diagnose(subject, checks=[CHECK], config=nndiag.Config(seed=seed))[CHECK]
    except Exception as exc:  # the sweep goes on; the row says what broke
        seconds = time.perf_counter() - start
        failure = f"{type(exc).__name__}: {exc}"
        return Run(**where, status="raised", named="-", worst=None, failed=[], seconds=seconds,
                   ratio=seconds / fb, message=failure)  # fmt: skip
    return Run(
        **where,
        status=result.status,
        named=handwritten.named(result, position) if position else "-",
        worst=handwritten.worst_tensor(result),
        failed=handwritten.failed_tensors(result),
        seconds=time.perf_counter() - start,
        ratio=result.cost.seconds / fb,
        message=result.message,
    )


def _no_slow_mode(*args: object, **kwargs: object) -> str:
    return " (slow-mode recomputation skipped by gradient_sweep)"


def gradcheck(subject: nndiag.Subject, position: str, factor: float) -> tuple[str, str, float]:
    """``torch.autograd.gradcheck(fast_mode=True)`` on a float64 copy, planted at
    ``position`` (none when empty): (pass / fail / error, the tensor named, seconds)."""
    model = copy.deepcopy(subject.model)
    if position:
        handwritten.plant(model, position, factor)
    model = handwritten.check_mode(model.double())
    batch = subject.batches[0]
    X, y = batch.X[:GRADCHECK_ROWS], batch.y[:GRADCHECK_ROWS]
    X = X.double() if X.is_floating_point() else X
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in trainable]
    values = tuple(p.detach().clone().requires_grad_(True) for _, p in trainable)

    def loss(*tensors: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, dict(zip(names, tensors)), (X,))
        return handwritten.loss_of(subject, out, y)

    module = sys.modules["torch.autograd.gradcheck"]
    start = time.perf_counter()
    try:
        with unittest.mock.patch.object(module, "_run_slow_mode_and_get_error", _no_slow_mode):
            torch.autograd.gradcheck(loss, values, fast_mode=True)
    except module.GradcheckError as exc:
        found = re.search(r"with respect to input (\d+)", str(exc))
        tensor = handwritten.unplanted_name(names[int(found.group(1))]) if found else "?"
        return "fail", tensor, time.perf_counter() - start
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}"[:200], time.perf_counter() - start
    return "pass", "", time.perf_counter() - start


def sweep(
    name: str, seed: int, factors: list[float], k: int, run_gradcheck: bool, width: int
) -> list[Run]:
    """The healthy model, then every position at every factor, for one model and seed."""
    options = {"width": width} if name == "cifar_resnet18" else {}
    subject = MODELS[name](seed, **options)
    fb = forward_backward_seconds(subject)
    shares = handwritten.gradient_shares(subject)
    print(f"# {name} seed {seed}: one float32 forward+backward {fb * 1e3:.1f} ms", flush=True)
    if not _WARM:  # the process's first diagnosis loads the backend: not a cost to report
        nndiag.diagnose(subject, checks=[CHECK])
        _WARM.append(name)
    runs = [diagnose(subject, seed, "", 1.0, 1.0, fb)]
    if run_gradcheck:
        _gradcheck(runs[-1], subject, "", 1.0)
    _print(runs[-1])
    for position in handwritten.positions(subject.model, k):
        for factor in factors:
            planted = handwritten.planted_subject(subject, position, factor)
            runs.append(diagnose(planted, seed, position, factor, shares[position], fb))
            if run_gradcheck:
                _gradcheck(runs[-1], subject, position, factor)
            _print(runs[-1])
    return runs


def _gradcheck(run: Run, subject: nndiag.Subject, position: str, factor: float) -> None:
    run.gradcheck, run.gradcheck_named, run.gradcheck_seconds = gradcheck(subject, position, factor)


def _print(run: Run) -> None:
    what = run.position or "(healthy)"
    gc = f" | gradcheck {run.gradcheck} {run.gradcheck_named}" if run.gradcheck else ""
    print(
        f"  {what} x{run.factor:g} share {run.share:.2g}: {run.status} / {run.named} "
        f"worst={run.worst} {run.seconds:.2f}s ({run.ratio:.0f}x){gc}",
        flush=True,
    )


# -- report ----------------------------------------------------------------------------------
def _percent(factor: float) -> str:
    return f"{(factor - 1) * 100:.3g}%"


def _cell(run: Run) -> str:
    verdict = f"{run.status} / {run.named}"
    if run.named == "other" and run.worst:
        verdict += f" ({run.worst})"
    return verdict if run.applicable else f"n/a ({verdict})"


def _gradcheck_cell(run: Run) -> str:
    if run.gradcheck == "fail":
        who = run.gradcheck_named
        mark = "named" if who == run.position else f"other ({who})"
        return f"fail / {mark} {run.gradcheck_seconds:.2f}s"
    return f"{run.gradcheck} {run.gradcheck_seconds:.2f}s"


def table(runs: list[Run], factors: list[float], with_gradcheck: bool) -> list[str]:
    head = ["model", "seed", "position", "share"]
    head += [f"{_percent(f)} status / named?" for f in factors]
    head += ["seconds", "x fwd+bwd"]
    if with_gradcheck:
        head += [f"gradcheck {_percent(f)}" for f in factors]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows: dict[tuple[str, int, str], dict[float, Run]] = {}
    for run in runs:
        rows.setdefault((run.model, run.seed, run.position), {})[run.factor] = run
    for (model, seed, position), by_factor in rows.items():
        if not position:
            run = by_factor[1.0]
            cells = [model, str(seed), "(healthy)", "-"]
            cells += [run.status if i == 0 else "" for i in range(len(factors))]
            cells += [f"{run.seconds:.2f}", f"{run.ratio:.0f}"]
            if with_gradcheck:
                cells += [_gradcheck_cell(run) if i == 0 else "" for i in range(len(factors))]
        else:
            got = [by_factor.get(f) for f in factors]
            share = next(r.share for r in got if r is not None)
            cells = [model, str(seed), f"`{position}`", f"{share:.2g}"]
            cells += [_cell(r) if r else "" for r in got]
            cells += [
                " / ".join(f"{r.seconds:.2f}" for r in got if r),
                " / ".join(f"{r.ratio:.0f}" for r in got if r),
            ]
            if with_gradcheck:
                cells += [_gradcheck_cell(r) if r else "" for r in got]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(runs: list[Run], factors: list[float], with_gradcheck: bool) -> list[str]:
    lines = []
    for model in dict.fromkeys(r.model for r in runs):
        mine = [r for r in runs if r.model == model]
        healthy = [r for r in mine if not r.position]
        parts = []
        for factor in factors:
            planted = [r for r in mine if r.position and r.factor == factor]
            counted = [r for r in planted if r.applicable]
            caught = sum(r.caught for r in counted)
            wrong = sum(r.status == "fail" and not r.caught for r in counted)
            text = f"caught {caught}/{len(counted)} at {_percent(factor)}"
            if wrong:
                text += f" ({wrong} failing on another tensor)"
            if with_gradcheck:
                gc = sum(r.gradcheck == "fail" and r.gradcheck_named == r.position for r in counted)
                text += f" [gradcheck {gc}/{len(counted)}]"
            parts.append(text)
        na = len({r.position for r in mine if r.position and not r.applicable})
        ratios = [r.ratio for r in mine]
        status = ", ".join(f"seed {r.seed}: {r.status}" for r in healthy)
        if with_gradcheck:
            status += " [gradcheck " + ", ".join(r.gradcheck for r in healthy) + "]"
        lines.append(
            f"- **{model}**: {'; '.join(parts)}; n/a (zero gradient) {na}; healthy {status}; "
            f"check cost median {statistics.median(ratios):.0f}x / max {max(ratios):.0f}x "
            "one forward+backward"
        )
    return lines


def _revision() -> str:
    """The commit, and the nndiag files modified in the working tree (read-only git)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "nndiag"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown revision"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head or '?'}" + (f" with {', '.join(changed)} modified" if changed else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="relu_mlp,conv_bn_cnn", help=f"of {list(MODELS)}")
    parser.add_argument("--factors", default="1.01,1.1", help="gradient scale factors")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--k", type=int, default=12, help="positions per model (at least)")
    parser.add_argument("--width", type=int, default=64, help="cifar_resnet18's base width")
    parser.add_argument("--gradcheck", action="store_true", help="also torch's gradcheck")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--json", type=Path, help="write every run as JSON here")
    args = parser.parse_args(argv)

    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {list(MODELS)}")
    factors = [float(f) for f in args.factors.split(",") if f]
    seeds = [int(s) for s in args.seeds.split(",") if s]

    runs: list[Run] = []
    start = time.perf_counter()
    for name in names:
        for seed in seeds:
            runs += sweep(name, seed, factors, args.k, args.gradcheck, args.width)
    elapsed = time.perf_counter() - start

    command = " ".join(["python benchmarks/gradient_sweep.py", *(argv or sys.argv[1:])])
    report = [
        "# gradient_check sweep: one tensor's gradient scaled",
        "",
        f"`{command}` — torch {torch.__version__}, {torch.get_num_threads()} thread, "
        f"{elapsed:.0f} s in all; {_revision()}. cifar_resnet18 width {args.width}.",
        "",
        "named?: `worst` (the planted tensor is `worst_tensor`), `listed` (among the failed "
        "tensors), `other` (the check fails on other tensors only), `-` (no fail). share: "
        f"the tensor's gradient norm over the whole gradient's; below {ZERO_SHARE:g} the row "
        "is n/a (a scale error of a zero gradient cannot show). seconds: diagnose()'s wall "
        "time; x fwd+bwd: the check's seconds over one float32 forward+backward.",
        "",
        *table(runs, factors, args.gradcheck),
        "",
        *summary(runs, factors, args.gradcheck),
        "",
    ]
    text = "\n".join(report)
    print("\n" + text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
