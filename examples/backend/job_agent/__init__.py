"""job_agent: job recommendations per user, recomputed by a real-time trigger (the user
finished profiling) and by a scheduler batch, saved under ``RecommendationLock``."""
