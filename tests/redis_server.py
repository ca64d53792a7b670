"""pytest plugin of this test suite: the private redis-server, from `sessionlock.testing`.

The helper lives in the package (`sessionlock.testing`, documented in docs/testing.md) so
that users' tests can use it too; this module keeps the name the suite imports
(`from redis_server import RedisServer, free_port`, `pytest_plugins = ["redis_server"]`).
"""

from __future__ import annotations

from sessionlock.testing import REDIS_SERVER, RedisServer, free_port, redis_server, redis_url

__all__ = ["REDIS_SERVER", "RedisServer", "free_port", "redis_server", "redis_url"]
