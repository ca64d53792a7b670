"""A stand-in for the LLM the chatbot and brainstorming modules call: a few ms of awaiting."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


async def complete(prompt: str, history: Sequence[str], delay: float) -> str:
    await asyncio.sleep(delay)  # sleep-ok: the simulated network call to the model
    return f"reply#{len(history)} to {prompt[:40]}"
