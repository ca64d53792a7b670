"""chatbot's sessions: the conversation history of one chat."""

from __future__ import annotations

from dataclasses import dataclass, field

from sessionlock import BaseSessionManager


@dataclass
class ChatContext:
    user_id: str
    history: list[str] = field(default_factory=list)
    turns: int = 0


class ChatSessionManager(BaseSessionManager[ChatContext]):
    """A chat lives an hour after its last message."""

    def __init__(self, *, idle_ttl: float = 3600, max_sessions: int = 100_000) -> None:
        super().__init__(idle_ttl=idle_ttl, max_sessions=max_sessions)
