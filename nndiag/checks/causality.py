"""``causality``: in an autoregressive model, the output at position t never depends on
inputs at positions after t.

The sequence analogue of ``batch_independence``: a causal mask left out (or applied after
the softmax), a bidirectional recurrent layer, a convolution padded on both sides. The
model then trains beautifully on next-token targets it can read and is useless when it
generates. On by default where the task is autoregressive: the data says so (the targets
are the inputs shifted by one position), the model does (it generates and has no
encoder), or the subject does (``Subject(..., causal=True)``).

Evidence, in evaluation mode, from one batch of copies of a probed row: copy u changes
only the input at position u (another token id, or noise of the inputs' size), and a
second set changes every position from u on. Outputs at positions t < u must stay as
they are in the unchanged copy, to float rounding. A leak is then shown on the shortest
prefix of the row that still leaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nndiag.checks.padding import ADVICE as PADDING_ADVICE
from nndiag.checks.padding import other_ids, padding
from nndiag.config import Config
from nndiag.contract import IGNORED_TARGET, Batch, Session
from nndiag.results import CheckResult

CHECK = "causality"

_ADVICE = (
    "A model that reads later positions sees the answer while training and cannot generate: "
    "look for an attention without its causal mask (is_causal=True, or a lower-triangular "
    "mask applied to the scores before the softmax), a mask of the wrong orientation, a "
    "bidirectional recurrent layer, a convolution padded on both sides of the time axis, "
    "or a pooling over the whole sequence."
)


@dataclass(frozen=True)
class SequenceLeak:
    """Output ``position`` of ``row`` moved by ``change`` (its outputs reach ``size``) when
    only inputs from ``source`` on (``alone``: only ``source``) were changed."""

    row: int
    position: int
    source: int
    change: float
    size: float
    alone: bool


def autoregressive(session: Session, batch: Batch) -> str | None:
    """Why the task is autoregressive, or None when nothing says it is."""
    if session.causal is not None:
        return "Subject(causal=True)" if session.causal else None
    X = session.sequence(batch)
    if X is not None and _next_token_targets(X, session.arrays(batch)[1]):
        return "the targets are the inputs shifted by one position (next-token prediction)"
    if session.model_causal():
        return "the model generates text and has no encoder"
    return None


def _next_token_targets(X: np.ndarray, y: np.ndarray) -> bool:
    integer = X.dtype.kind in "iu" and y.dtype.kind in "iu"
    if not integer or X.ndim != 2 or y.shape != X.shape or X.shape[1] < 2:
        return False
    kept = y[:, :-1] != IGNORED_TARGET  # ignored positions (the last one, once labels are shifted)
    return bool(kept.any() and (y[:, :-1] == X[:, 1:])[kept].all())


def _positions(length: int, most: int, real: Any = None) -> list[int]:
    """Positions 1..length-1 to change (real tokens only, where a mask marks padding), at
    most ``most`` of them spread evenly."""
    candidates = [u for u in range(1, length) if real is None or real[u]]
    if len(candidates) <= most:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, most)
    return sorted({candidates[int(round(i))] for i in picks})


def _changed(seq: np.ndarray, positions: list[int], rng: np.random.Generator, seen: Any) -> Any:
    """Copies of the row ``seq`` (1, T, ...): the row itself, then per position u one copy
    changed at u alone and one changed from u on."""
    copies = np.repeat(seq, 1 + 2 * len(positions), axis=0)
    for k, u in enumerate(positions):
        for copy, span in ((1 + k, slice(u, u + 1)), (1 + len(positions) + k, slice(u, None))):
            part = copies[copy, span]
            if seq.dtype.kind in "iu":
                copies[copy, span] = other_ids(part, seen, rng)
            else:
                scale = float(seq.std()) or 1.0
                copies[copy, span] = part + scale * rng.standard_normal(part.shape)
    return copies


def _moved(
    by_position: np.ndarray, real: np.ndarray, positions: list[int], row: int, rtol: float
) -> list[SequenceLeak]:
    """Leaks read with one axis as time: (copies, T, rest) outputs, copy 0 unchanged."""
    base = by_position[0]
    size = float(np.abs(base[real]).max()) or 1e-12
    found = []
    for k, u in enumerate(positions):
        for copy, alone in ((1 + k, True), (1 + len(positions) + k, False)):
            # Outputs at padding positions are not compared: the padding probe's concern.
            moved = np.abs(by_position[copy, :u] - base[:u]).max(axis=1) * real[:u]
            over = np.nonzero(moved > rtol * size)[0]
            if len(over):
                t = int(over[0])
                found.append(SequenceLeak(row, t, u, float(moved[t]), size, alone))
    return found


def _leaks(
    session: Session, batch: Batch, row: int, config: Config, rng: np.random.Generator
) -> list[SequenceLeak] | None:
    """The leaks into ``row``; None when the outputs have no axis of the input positions.

    Where several output axes have the inputs' length (a vocabulary or a feature width
    equal to it), each is read as time in turn, and a leak counts only if every reading
    shows it: the axis that is time shows none in a causal model."""
    whole = session.sequence(batch)
    seq = whole[row : row + 1]
    length = seq.shape[1]
    mask = session.real_positions(batch)
    real = np.ones(length, bool) if mask is None else np.asarray(mask[row], bool)
    if not real.any():
        return []  # a row of padding alone: no real output to read
    seen = np.unique(whole)
    if seq.dtype.kind in "iu" and len(seen) < 2:
        return []  # one token id throughout: no other id to put in its place
    positions = _positions(length, config.causality_positions, real)
    copies = session.take(batch, [row] * (1 + 2 * len(positions)))
    changed = _changed(seq, positions, rng, seen)
    outputs = np.asarray(
        session.evaluate(session.with_sequence(copies, changed), mode="eval", outputs=True).outputs
    )
    one_label = np.ndim(session.arrays(batch)[1]) < 2
    axes = [a for a in range(1, outputs.ndim) if outputs.shape[a] == length]
    if not axes or (one_label and outputs.ndim == 2):
        return None  # one output (or one vector of scores) per sequence
    readings = [
        _moved(
            np.moveaxis(outputs, a, 1).reshape(len(outputs), length, -1),
            real,
            positions,
            row,
            config.causality_rtol,
        )
        for a in axes
    ]
    return min(readings, key=len)


def _first(leaks: list[SequenceLeak]) -> SequenceLeak:
    """The leak with the nearest source, then the earliest output; single changes first."""
    return min(leaks, key=lambda x: (not x.alone, x.source, x.position))


def _shortest(session: Session, batch: Batch, leak: SequenceLeak, config: Config) -> int | None:
    """The length of the row's prefix that still leaks (positions 0..source), or None when
    the model does not run on it or the leak needs the later positions."""
    seq = session.sequence(batch)[leak.row : leak.row + 1]
    prefix = session.with_sequence(session.take(batch, [leak.row]), seq[:, : leak.source + 1])
    try:
        again = _leaks(session, prefix, 0, config, np.random.default_rng(config.seed))
    except Exception:  # a model that takes one sequence length only
        return None
    return leak.source + 1 if again else None


def causality(session: Session, config: Config) -> CheckResult:
    """Fail when an output position depends on a later input position (evaluation mode),
    where the task is autoregressive, or when padding under an attention mask changes the
    outputs at real positions."""
    if session.causal is False:
        return CheckResult(CHECK, "skip", "Subject(causal=False): not checked.")
    batch = session.rows(config.causality_rows)
    why = autoregressive(session, batch)
    padded = padding(session, batch, config)
    if why is None and padded is None:
        return CheckResult(
            CHECK,
            "skip",
            "Not an autoregressive task: the targets are not the inputs shifted by one "
            "position and the model does not say it generates; pass Subject(..., "
            "causal=True) to check that no output reads a later position. No attention "
            "mask marks padding either.",
        )
    mode = f"checked in {session.words.eval_mode}"
    metrics: dict[str, Any] = {"why": why, "rtol": config.causality_rtol, "seed": config.seed}
    if padded is not None:
        metrics.update(padded_rows=padded.rows, padding_leaks=len(padded.leaks))
    if padded is not None and padded.leaks:
        first = padded.leaks[0]
        metrics.update(row=first.row, change=first.change, size=first.size, cause="padding")
        return CheckResult(
            CHECK,
            "fail",
            f"Padding is not invisible: {padded.sentence()}; {mode}.",
            metrics,
            hint=PADDING_ADVICE,
        )
    pad_note = f"; {padded.sentence()}" if padded is not None else ""
    if why is None:
        return CheckResult(CHECK, "pass", f"Padding is invisible: {pad_note[2:]}; {mode}.", metrics)
    return _causal(session, batch, why, metrics, config, f"{pad_note}; {mode}")


def _causal(
    session: Session, batch: Batch, why: str, metrics: dict[str, Any], config: Config, tail: str
) -> CheckResult:
    seq = session.sequence(batch)
    if seq is None or seq.shape[1] < 2:
        missing = (
            "sequences of one position: nothing later to read"
            if seq is not None
            else "nndiag reads a sequence from one input array with a time axis or a dict's "
            "input_ids, and the inputs hold neither"
        )
        return CheckResult(CHECK, "skip", f"Autoregressive ({why}), but {missing}.")
    rng = np.random.default_rng(config.seed)
    rows = sorted({0, len(batch) - 1})
    leaks: list[SequenceLeak] = []
    for row in rows:
        found = _leaks(session, batch, row, config, rng)
        if found is None:
            return CheckResult(
                CHECK,
                "skip",
                f"Autoregressive ({why}), but no output axis has the inputs' "
                f"{seq.shape[1]} positions (one output per sequence): nothing to compare.",
            )
        leaks += found
    length = seq.shape[1]
    mask = session.real_positions(batch)
    metrics.update(
        positions=length,
        changed_positions=_positions(
            length, config.causality_positions, None if mask is None else mask[rows[0]]
        ),
        rows=rows,
    )
    if not leaks:
        return CheckResult(
            CHECK,
            "pass",
            f"No output position read a later input position: changing the inputs at up "
            f"to {config.causality_positions} of {length} positions (alone, and every "
            f"position from there on) of rows {', '.join(map(str, rows))} left every "
            f"earlier output as it was; autoregressive because {why}{tail}.",
            metrics,
        )
    return _failed(session, batch, leaks, metrics, config, tail)


def _failed(
    session: Session,
    batch: Batch,
    leaks: list[SequenceLeak],
    metrics: dict[str, Any],
    config: Config,
    tail: str,
) -> CheckResult:
    first = _first(leaks)
    pairs = sorted({(x.position, x.source) for x in leaks if x.alone})
    changed = "the input at position" if first.alone else "the inputs from position"
    metrics.update(
        cause="future",
        row=first.row,
        position=first.position,
        source=first.source,
        change=first.change,
        size=first.size,
        leaking_pairs=[list(p) for p in pairs],
    )
    evidence: dict[str, Any] = {
        "pairs": [{"position": t, "source": u} for t, u in pairs],
    }
    shortest = _shortest(session, batch, first, config)
    where = ""
    if shortest is not None:
        metrics["minimal_length"] = shortest
        evidence["counterexample"] = f"the first {shortest} positions of row {first.row}"
        where = f" It leaks on the first {shortest} positions of row {first.row} alone."
    shown = ", ".join(f"{t}<-{u}" for t, u in pairs[:8]) + (" ..." if len(pairs) > 8 else "")
    return CheckResult(
        CHECK,
        "fail",
        f"Output position {first.position} depends on a later input: changing {changed} "
        f"{first.source} of row {first.row} moved the outputs at position {first.position} "
        f"by {first.change:.3g} (they reach {first.size:.3g}).{where} Leaking (output<-input) "
        f"positions: {shown or 'only when several later positions change together'}. "
        f"Autoregressive because {metrics['why']}{tail}.",
        metrics,
        evidence,
        f"{_ADVICE} In {session.words.framework}: {session.words.causal_mask}.",
    )
