"""brainstorming's sessions: a board of ideas several participants join by its id."""

from __future__ import annotations

from dataclasses import dataclass, field

from sessionlock import BaseSessionManager


@dataclass
class BrainstormContext:
    topic: str
    participants: list[str] = field(default_factory=list)
    ideas: list[str] = field(default_factory=list)
    expansions: list[str] = field(default_factory=list)


class BrainstormSessionManager(BaseSessionManager[BrainstormContext]):
    """A board lives two hours after its last change."""

    def __init__(self, *, idle_ttl: float = 7200, max_sessions: int = 100_000) -> None:
        super().__init__(idle_ttl=idle_ttl, max_sessions=max_sessions)
