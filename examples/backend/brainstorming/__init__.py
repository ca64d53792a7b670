"""brainstorming: shared sessions joined by id, written by sync and async endpoints."""
