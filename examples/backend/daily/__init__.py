"""daily: an FSM questionnaire (mood, sleep, activity, reflection) with sync endpoints."""
