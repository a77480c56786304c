"""The rules' bookkeeping, apart from where the findings come from: a :class:`Watch` holds
the history, runs the rules on it, keeps the first step each one fired and turns them into
results. The live monitor feeds it from hooks on the user's model; the ``training`` check
feeds it from steps of nndiag's private copies."""

from __future__ import annotations

from nndiag.monitoring.findings import History
from nndiag.monitoring.rules import RULES, Rule, Verdict
from nndiag.monitoring.settings import MonitorSettings
from nndiag.results import CheckResult, Status

__all__ = ["Watch"]

_NO_RERUN = ""  # a rule of a training run: no command reruns it
_SHOWN = 1000  # loss points kept in a result's evidence


def _thinned(losses: list[float]) -> dict[str, list[float]]:
    """The loss curve as (steps, values), every k-th point of a long run: a report of a
    200,000-step run stays small."""
    stride = max(1, -(-len(losses) // _SHOWN))
    return {"steps": list(range(0, len(losses), stride)), "values": losses[::stride]}


class Watch:
    """The rules over one run's findings.

    Attributes:
        history: The findings so far; append to it, then call :meth:`judge`.
        fired: Per rule id, the step it first fired at and its verdict.
        halted: The step and rule id of the first fatal rule, once one fired.
    """

    def __init__(
        self, settings: MonitorSettings | None = None, *, hint_validation: str = ""
    ) -> None:
        self.settings = settings if settings is not None else MonitorSettings()
        self.history = History()
        self.fired: dict[str, tuple[int, Verdict]] = {}
        self.halted: tuple[int, str] | None = None
        self.hint_validation = hint_validation

    def judge(self, reads: tuple[str, ...]) -> list[Rule]:
        """Run the rules that read ``reads`` ("loss", "sample", "validation") on the history
        as it stands; the fatal rules that fired now."""
        fatal = []
        for rule in RULES:
            # After a fatal rule, the others would judge its consequences (a diverged run's
            # dead units, its flat loss): only the fatal ones go on.
            if rule.reads not in reads or (self.halted is not None and not rule.fatal):
                continue
            verdict = rule.judge(self.history, self.settings)
            if verdict is None:
                continue
            known = self.fired.get(rule.id)
            if known is None or (known[1].status == "warn" and verdict.status == "fail"):
                self.fired[rule.id] = (self.history.step, verdict)
                if rule.fatal:
                    fatal.append(rule)
                    if self.halted is None:
                        self.halted = (self.history.step, rule.id)
        return fatal

    def results(self, subject: str, every: int) -> list[CheckResult]:
        """One result per rule, in the table's order."""
        return [self.result(rule, subject, every) for rule in RULES]

    def result(self, rule: Rule, subject: str, every: int) -> CheckResult:
        """``fail``/``warn`` with the first step the rule fired at, ``pass`` when it watched
        and never fired, ``skip`` when it had nothing to read."""
        h = self.history
        evidence = {"losses": _thinned(h.losses), "every": every}
        if rule.id in self.fired:
            step, verdict = self.fired[rule.id]
            metrics = {"step": step, **verdict.metrics}
            status: Status = "fail" if verdict.status == "fail" else "warn"
            return CheckResult(
                rule.id, status, verdict.message, metrics, evidence, verdict.hint,
                subject=subject,
                rerun=_NO_RERUN,
            )  # fmt: skip
        missing = self._missing(rule)
        if missing:
            return CheckResult(
                rule.id, "skip", missing, {"step": None}, subject=subject, rerun=_NO_RERUN
            )
        message = f"Over {h.step + 1} steps, {rule.watches}."
        if self.halted is not None and not rule.fatal:
            step, fatal = self.halted
            message = f"Up to step {step}, when {fatal} fired, {rule.watches}; not judged after it."
        return CheckResult(
            rule.id, "pass", message, {"step": None}, evidence, subject=subject, rerun=_NO_RERUN
        )

    def _missing(self, rule: Rule) -> str | None:
        h = self.history
        if h.step < 0:
            return "No step was recorded."
        if rule.reads == "validation" and not h.validations:
            return f"No validation was recorded{self.hint_validation}."
        if rule.reads == "sample" and not h.samples:
            return "No step was sampled (a run shorter than every= steps)."
        if rule.id == "dying_units" and not any(
            layer.dead is not None for s in h.samples for layer in s.layers
        ):
            return "No ReLU-family layer ran in training mode on a sampled step."
        return self._too_short(rule)

    def _too_short(self, rule: Rule) -> str | None:
        """Why a rule that never fired could not have: the run was too short for it."""
        s, h = self.settings, self.history
        needs = {
            "loss_spike": (s.spike_confirm + 1, h.step + 1, "steps"),
            "loss_flat": ((s.flat_patience + 1) * s.flat_window, h.step + 1, "steps"),
            "dying_units": (3, len(h.samples), "sampled steps"),
            "gradient_norm": (3, len(h.samples), "sampled steps"),
            "generalization_gap": (s.gap_patience + 1, len(h.validations), "validations"),
        }.get(rule.id)
        if needs is None or needs[1] >= needs[0]:
            return None
        return f"Not judged: it needs {needs[0]} {needs[2]}, and the run had {needs[1]}."
