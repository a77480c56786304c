"""nndiag on real library models: each check's verdict and cost, against one float32
forward+backward of the same batch measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/real_models.py [names...] [--seeds 0,1,2]
        [--checks initial_loss,numerics] [--no-bugs]

Names are those of ``tests/real_models/models.py`` (``HEALTHY``, ``BUGS``, ``SLOW_BUGS``);
none given runs ``HEALTHY`` and ``BUGS``. Healthy models run for every seed, planted bugs
for the first; a bug row marks the check that must catch it with ``*``. ``ratio`` is the
diagnosis' seconds over the forward+backward's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nndiag  # noqa: E402
from nndiag.checks import default_checks  # noqa: E402
from tests.real_models.models import BUGS, HEALTHY, MISSED_BUGS, SLOW_BUGS  # noqa: E402

torch.set_num_threads(1)

SHORT = {
    "initial_loss": "init",
    "regularization_loss": "reg",
    "overfit_small": "overfit",
    "gradient_check": "grad",
    "activation_stats": "act",
    "dead_neurons": "dead",
    "batch_independence": "batch",
    "numerics": "num",
    "param_updates": "upd",
}


def forward_backward_seconds(subject: nndiag.Subject, repeats: int = 3) -> float:
    """Median time of one float32 forward+backward of the subject's first batch (train
    mode, as a training step would), on a copy so the subject's model is untouched."""
    import copy

    model = copy.deepcopy(subject.model).float().train()
    batch = subject.batches[0]
    times = []
    for _ in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(batch.X)
        out = getattr(out, "logits", out)  # a transformers ModelOutput
        if subject.loss is not None:
            loss = subject.loss(out, batch.y)
        else:
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), batch.y.reshape(-1))
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first call warms up


def run(name: str, factory, seed: int, checks: list[str], target: str | None) -> list[str]:
    subject = factory(seed)
    fb = forward_backward_seconds(subject)
    start = time.perf_counter()
    try:
        report = nndiag.diagnose(subject, checks=checks, config=nndiag.Config(seed=seed))
    except nndiag.errors.InvalidSubject as exc:
        print(" | ".join([name, str(seed), f"InvalidSubject: {exc}"]), flush=True)
        return [name, str(seed), "InvalidSubject"]
    total = time.perf_counter() - start
    cells = []
    for check in checks:
        result = report[check]
        mark = "*" if check == target else ""
        cells.append(f"{mark}{result.status} {result.cost.seconds:.1f}s")
    row = [name, str(seed), *cells, f"{total:.1f}", f"{fb * 1e3:.1f}", f"{total / fb:.0f}"]
    notes = [
        f"    {check}: {report[check].status}: {report[check].message}"
        for check in checks
        if report[check].status in ("fail", "error") or check == target
    ]
    print(" | ".join(row), flush=True)
    for note in notes:
        print(note, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models to run (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--checks", default="", help="comma-separated checks (default: all)")
    parser.add_argument("--no-bugs", action="store_true", help="skip the planted-bug models")
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",") if s]
    checks = [c for c in args.checks.split(",") if c] or list(default_checks())
    bugs = {**BUGS, **SLOW_BUGS, **MISSED_BUGS}
    unknown = [n for n in args.names if n not in HEALTHY and n not in bugs]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {[*HEALTHY, *bugs]}")
    names = args.names or [*HEALTHY, *([] if args.no_bugs else BUGS)]

    header = ["model", "seed", *(SHORT.get(c, c) for c in checks)]
    print(" | ".join([*header, "total s", "fwd+bwd ms", "ratio"]), flush=True)
    for name in names:
        if name in HEALTHY:
            for seed in seeds:
                run(name, HEALTHY[name], seed, checks, None)
        else:
            factory, target = bugs[name]
            run(name, factory, seeds[0], checks, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
