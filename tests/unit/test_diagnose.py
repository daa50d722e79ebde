"""usernet/diagnose.py: each start-up failure's line names the thing and the fix.

The machine-wide sysctls that decide whether user namespaces may be made are read from files;
here they are fake files (the real ones are never written), one per case.
"""

import errno
import os

import pytest

from usernet import diagnose


@pytest.fixture
def sysctls(tmp_path, monkeypatch):
    """Point diagnose at fake /proc/sys files; ``set(name, value)`` writes one."""
    names = {"max": "MAX_USER_NAMESPACES", "clone": "UNPRIVILEGED_USERNS_CLONE",
             "apparmor": "APPARMOR_RESTRICT_USERNS"}
    for key, attr in names.items():
        monkeypatch.setattr(diagnose, attr, str(tmp_path / key))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    def set_(key, value):
        (tmp_path / key).write_text(value + "\n")
    set_("max", "15000")
    return set_


def test_userns_max_zero(sysctls):
    sysctls("max", "0")
    line = diagnose.userns_error(errno.ENOSPC)
    assert "user namespaces are disabled (user.max_user_namespaces = 0)" in line
    assert "; fix: as root, sysctl -w user.max_user_namespaces=15000" in line


def test_userns_limit_reached(sysctls):
    line = diagnose.userns_error(errno.ENOSPC)
    assert "the limit user.max_user_namespaces (15000) is reached" in line and "; fix: " in line


def test_unprivileged_userns_clone_off(sysctls):
    sysctls("clone", "0")
    line = diagnose.userns_error(errno.EPERM)
    assert "(kernel.unprivileged_userns_clone = 0)" in line
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in line


def test_apparmor_restriction(sysctls):
    sysctls("apparmor", "1")
    line = diagnose.userns_error(errno.EACCES)
    assert "kernel.apparmor_restrict_unprivileged_userns = 1" in line and "; fix: " in line


def test_userns_refused_otherwise(sysctls):
    line = diagnose.userns_error(errno.EPERM)
    assert line.startswith("cannot create a user namespace (Operation not permitted)")
    assert "seccomp" in line and "; fix: " in line


def test_api_socket_problems(tmp_path):
    assert diagnose.api_socket_problem(str(tmp_path / "ok.sock")) is None
    long = "/" + "x" * 107
    assert "too long (108 bytes; the limit is 107)" in diagnose.api_socket_problem(long)
    assert "does not exist" in diagnose.api_socket_problem(str(tmp_path / "no" / "a.sock"))


def test_tun_problems(tmp_path):
    assert "does not exist" in diagnose.tun_problem(None, str(tmp_path / "tun"))
    plain = tmp_path / "plain"
    plain.write_text("")
    assert "not a character device" in diagnose.tun_problem(None, str(plain))


def test_api_client_errors():
    for code, words in ((errno.ENOENT, "does not exist"), (errno.ECONNREFUSED, "nothing listens"),
                        (errno.EACCES, "permission denied")):
        line = diagnose.api_client_error("/x.sock", OSError(code, os.strerror(code)))
        assert words in line and "; fix: " in line


def test_message_strips_errno_prefix():
    e = OSError(errno.ENOENT, "cannot bind API socket '/a/b': No such file or directory")
    assert diagnose.message(e) == "cannot bind API socket '/a/b': No such file or directory"


def test_publish_error_gets_its_fix():
    from usernet.host.forward import PublishError
    e = PublishError("cannot publish tcp port 0.0.0.0:80: Address already in use")
    e.errno = errno.EADDRINUSE
    line = diagnose.message(e)
    assert line.startswith("cannot publish tcp port 0.0.0.0:80: Address already in use; fix: ")
