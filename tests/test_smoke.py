import sessionlock


def test_version_and_exports() -> None:
    assert isinstance(sessionlock.__version__, str)
    for name in sessionlock.__all__:
        assert hasattr(sessionlock, name)


def test_create_get(mgr: sessionlock.BaseSessionManager[object]) -> None:
    sid = mgr.create_session({"a": 1})
    assert mgr.get_session(sid) == {"a": 1}
