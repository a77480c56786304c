"""Peak memory of ``diagnose()`` on library models, as a multiple of the peak of one
training step (forward, backward, Adam step) of the same model on the same batch (issue
budget: 3x). Each side runs in a fresh process, so one peak cannot hide the other.

Run with ``pytest benchmarks/bench_memory.py -s``; each benchmark stores the peaks and
their ratio in ``extra_info`` and prints them. Nothing is asserted about memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, os, sys, threading
import torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.real_models import models
import nndiag
page = os.sysconf("SC_PAGE_SIZE")
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
subject = getattr(models, {name!r})(0)  # a factory of tests/real_models/models.py
base = resident()
peak = [base]
done = threading.Event()
def sample():  # the peak resident memory of the measured part, not of the imports
    while not done.is_set():
        peak[0] = max(peak[0], resident())
        done.wait(0.002)
watcher = threading.Thread(target=sample)
watcher.start()
if {mode!r} == "step":
    from nndiag.backends.torch import inputs
    from nndiag.backends.torch.session import cross_entropy
    model, batch = subject.model.train(), subject.batches[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = inputs.logits(inputs.call(model, batch.X))
    (subject.loss or cross_entropy)(out, batch.y).backward()
    optimizer.step()
else:
    nndiag.diagnose(subject)
done.set()
watcher.join()
print(json.dumps([base, max(peak[0], resident())]))
"""


def _peak_bytes(name: str, mode: str) -> int:
    """Peak resident memory of the measured part (the model built, before the step or the
    diagnosis), in bytes; the imports' own peak does not count."""
    code = _CHILD.format(root=str(ROOT), name=name, mode=mode)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    _, peak = json.loads(done.stdout.strip().splitlines()[-1])
    return int(peak)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "gpt2", "vgg11_bn"])
def test_peak_memory_against_a_training_step(benchmark: pytest.FixtureRequest, name: str) -> None:
    peaks: dict[str, int] = {}

    def run() -> None:
        peaks["step"] = _peak_bytes(name, "step")
        peaks["diagnose"] = _peak_bytes(name, "diagnose")

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ratio = peaks["diagnose"] / peaks["step"]
    benchmark.extra_info.update(
        ratio=round(ratio, 2),
        step_peak_mb=round(peaks["step"] / 2**20),
        diagnose_peak_mb=round(peaks["diagnose"] / 2**20),
    )
    print(
        f"\n{name}: diagnose peaks at {peaks['diagnose'] / 2**20:.0f} MB, "
        f"{ratio:.2f}x a training step's {peaks['step'] / 2**20:.0f} MB"
    )
