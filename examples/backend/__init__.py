"""The example backend: the daily / chatbot / brainstorming / job_agent modules of the FastAPI
service whose incidents sessionlock removes, written as those modules would use it.

Run it with ``uvicorn --app-dir examples backend.app:app``. ``SESSIONLOCK_EXAMPLE_DESIGN``
selects the session managers (``sessionlock`` or one of the old designs, for comparison); see
:mod:`backend.settings`.
"""
