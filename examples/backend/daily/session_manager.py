"""daily's sessions: one questionnaire per session, advanced one answer at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from sessionlock import BaseSessionManager


class DailyState(str, Enum):
    MOOD = "mood"
    SLEEP = "sleep"
    ACTIVITY = "activity"
    REFLECTION = "reflection"
    DONE = "done"


_NEXT = {
    DailyState.MOOD: DailyState.SLEEP,
    DailyState.SLEEP: DailyState.ACTIVITY,
    DailyState.ACTIVITY: DailyState.REFLECTION,
    DailyState.REFLECTION: DailyState.DONE,
    DailyState.DONE: DailyState.MOOD,  # the next answer starts the next day's questionnaire
}


@dataclass
class DailyFSMContext:
    user_id: str
    state: DailyState = DailyState.MOOD
    day: int = 1
    answers: dict[str, str] = field(default_factory=dict)
    #: every accepted answer, in order (what the load test counts to find lost updates)
    log: list[str] = field(default_factory=list)

    def plan(self, answer: str) -> DailyStep:
        """The context after ``answer`` (read now, applied by :meth:`apply` once stored)."""
        day, answers, state = self.day, dict(self.answers), self.state
        if state is DailyState.DONE:
            day, answers, state = day + 1, {}, DailyState.MOOD
        answers[state.value] = answer
        log = [*self.log, f"{day}:{state.value}:{answer}"]
        return DailyStep(state=_NEXT[state], day=day, answers=answers, log=log)

    def apply(self, step: DailyStep) -> None:
        self.state, self.day, self.answers, self.log = step.state, step.day, step.answers, step.log


@dataclass(frozen=True)
class DailyStep:
    state: DailyState
    day: int
    answers: dict[str, str]
    log: list[str]


class DailySessionManager(BaseSessionManager[DailyFSMContext]):
    """A questionnaire lives 30 minutes after its last answer, a day at most."""

    def __init__(self, *, idle_ttl: float = 1800, max_sessions: int = 100_000) -> None:
        super().__init__(idle_ttl=idle_ttl, absolute_ttl=86_400, max_sessions=max_sessions)
