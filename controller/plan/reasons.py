"""The state machine's vocabulary: why a rollout is where it is, and what it is waiting for.

``Reason`` names every transition (a status' ``reason`` and an event's); code asks its properties
instead of comparing strings. ``Waiting`` is the explicit sub-state of a rollout that is not moving
on its own (what it waits for decides who may release it and how soon to look again), so nothing is
ever decided on the text of a message.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    NONE = ""
    INITIALIZED = "Initialized"  # the first revision: stable at once
    ROLLOUT_STARTED = "RolloutStarted"  # a new canary against stable
    ROLLOUT_RESTARTED = "RolloutRestarted"  # the rollout spec changed mid-rollout: step 0 again
    SUPERSEDED = "Superseded"  # a newer target replaced the canary in flight
    STEP_COMPLETED = "StepCompleted"  # steps advanced this cycle
    WEIGHT_CHANGED = "WeightChanged"
    FLAG_SET = "FlagSet"
    HEADER_ROUTE_SET = "HeaderRouteSet"
    MIRROR_SET = "MirrorSet"
    PAUSED = "Paused"  # event: an indefinite pause step was reached
    PAUSE_STEP = "PauseStep"  # status: at an indefinite pause step
    PAUSED_BY_USER = "PausedByUser"
    RESUMED = "Resumed"
    ANALYSIS_SUCCESSFUL = "AnalysisSuccessful"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"  # paused for a person
    METRICS_UNAVAILABLE = "MetricsUnavailable"  # holding (or aborted, by policy)
    PROMOTED = "Promoted"  # event: the canary became stable
    STEPS_COMPLETED = "StepsCompleted"  # status: promoted after its last step
    PROMOTED_FULL = "PromotedFull"  # status: promoted by `promote --full`
    ABORTED = "Aborted"  # event: a canary stopped by a rollback
    ABORTED_BY_USER = "AbortedByUser"
    ANALYSIS_FAILED = "AnalysisFailed"
    CANARY_FAILED = "CanaryFailed"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    TARGET_REVERTED = "TargetReverted"  # the target is the stable revision again
    ROLLED_BACK = "RolledBack"  # back to the previous (warm) stable at once
    ROLLBACK_WINDOW_CLOSED = "RollbackWindowClosed"
    PROCESS_CRASHED = "ProcessCrashed"  # event: a process of a revision or the router died (local runtime)
    GATE_HOLDING = "GateHolding"  # a gate has not answered 2xx: the rollout waits for it
    GATE_PASSED = "GatePassed"  # event: a gate let the rollout through
    GATE_FAILED = "GateFailed"  # pre-rollout failed too often, or a rollback gate asked for it: aborted
    AWAITING_APPROVAL = "AwaitingApproval"  # governance: steps done, approvals missing (held at its weight)
    AWAITING_SOAK = "AwaitingSoak"  # governance: steps done, the policy's minimum soak not elapsed
    REJECTED = "Rejected"  # governance: an approver rejected the canary: aborted
    APPROVED = "Approved"  # event: an approval was given
    BREAK_GLASS = "BreakGlass"  # event: a change started with the policy's windows and soak overridden
    FORBIDDEN = "Forbidden"  # governance (operator): the spec's new target's author may not promote it
    OUTSIDE_WINDOW = "OutsideWindow"  # governance (operator): the spec's new target is outside the windows

    @classmethod
    def parse(cls, value: str) -> Reason:
        """A stored reason; one this version does not know reads as NONE (never an error)."""
        try:
            return cls(value)
        except ValueError:
            return cls.NONE

    @property
    def moves_aliases(self) -> bool:
        """True when the registry's @stable/@canary aliases follow this transition."""
        return self in _MOVES_ALIASES

    @property
    def rolled_back(self) -> bool:
        """True when this transition sent all traffic back to the stable (or an earlier) revision."""
        return self in _ROLLED_BACK


class Waiting(enum.StrEnum):
    """What a rollout in flight waits for (None in the status: nothing, it moves on its own)."""

    CANARY = "Canary"  # the canary to be ready: looked at again within a second
    PAUSE_STEP = "PauseStep"  # an indefinite pause step: resume releases it
    USER = "User"  # a pause people asked for: unpausing releases it
    REVIEW = "Review"  # an inconclusive analysis: resume re-runs it, or abort
    METRICS = "Metrics"  # the metrics provider to answer again (metricsDown: hold)
    GATE = "Gate"  # a webhook gate to answer 2xx: asked again after its interval
    GATE_ASK = "GateAsk"  # a gate reached this cycle: asked at the next one, within a second
    APPROVAL = "Approval"  # approvals the policy requires: `modship approve` releases it
    SOAK = "Soak"  # the policy's minimum soak time: released when it elapses

    @property
    def poll_soon(self) -> bool:
        """True when the condition can clear any moment (worth a look every HEALTH_POLL)."""
        return self in (Waiting.CANARY, Waiting.GATE_ASK)

    @classmethod
    def parse(cls, value: str | None) -> Waiting | None:
        try:
            return cls(value) if value else None
        except ValueError:
            return None


_MOVES_ALIASES = frozenset(
    {
        Reason.INITIALIZED,
        Reason.ROLLOUT_STARTED,
        Reason.ROLLOUT_RESTARTED,
        Reason.PROMOTED,
        Reason.PROMOTED_FULL,
        Reason.ROLLED_BACK,
        Reason.ABORTED_BY_USER,
        Reason.ANALYSIS_FAILED,
        Reason.CANARY_FAILED,
        Reason.METRICS_UNAVAILABLE,
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        Reason.TARGET_REVERTED,
        Reason.SUPERSEDED,
        Reason.GATE_FAILED,
        Reason.REJECTED,
    }
)
_ROLLED_BACK = frozenset(
    {
        Reason.ABORTED_BY_USER,
        Reason.ANALYSIS_FAILED,
        Reason.CANARY_FAILED,
        Reason.METRICS_UNAVAILABLE,
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        Reason.ROLLED_BACK,
        Reason.GATE_FAILED,
        Reason.REJECTED,
    }
)
