"""What ``usernet run --daemon`` becomes once the daemon has the TAP.

``run`` made CMD's namespaces, so it is CMD's parent, and its exit status is
what a shell or a supervisor waits for; with the daemon serving the network
it has nothing else to do. So it execs this file (same PID, still the
parent) in an interpreter started with ``-I -S``: no site, nothing of usernet
imported, ~9 MiB of RSS instead of ~25. Standard library only, and run as a
script; usernet imports it only to run :func:`main` in its own process
when the interpreter cannot be exec'd again (a user who may not reach it
by path: the same code, without the memory saving).

argv: CHILD_PID CTL_FD SOCK_FD GRACE SOCKET_PATH LOG_FILE. It releases CMD
(the "G" byte on CTL_FD, the run child's control pipe), passes SIGTERM,
SIGINT and SIGHUP on to the child (SIGKILL after GRACE seconds; negative:
never), ignores SIGUSR1/2, says once when the daemon's connection (SOCK_FD)
closes, and exits with CMD's status (128+N if killed by signal N). Lines go
to stderr, or are appended to LOG_FILE when it is not empty, in usernet's
key=value format.
"""

import os
import select
import signal
import sys
import time


def _say(msg: str, log_file: str) -> None:
    """One warning line in usernet's key=value format (usernet/log.py)."""
    t = time.time()
    text = msg.replace("\\", "\\\\").replace('"', '\\"')
    line = (f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.{int(t * 1000) % 1000:03d}Z "
            f'level=warn event=log msg="{text}"\n')
    try:
        if log_file:
            with open(log_file, "a") as f:
                f.write(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    except OSError:
        pass


def main(argv: list) -> int:
    """Wait as described above; CMD's status."""
    pid, ctl, sock = int(argv[0]), int(argv[1]), int(argv[2])
    grace, path, log_file = float(argv[3]), argv[4], argv[5]
    armed = []

    def on_signal(sig, _frame):
        # The child is not reaped before waitpid below: its pid cannot be reused.
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        if not armed and grace >= 0:
            armed.append(True)
            signal.setitimer(signal.ITIMER_REAL, max(grace, 0.001))   # 0 would disarm

    def on_alarm(_sig, _frame):
        _say(f"usernet: the command did not exit {grace:g}s after being told to stop; "
             "killing it", log_file)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    pidfd = os.pidfd_open(pid)
    try:
        os.write(ctl, b"G")          # the handlers are in place: release CMD
    except BrokenPipeError:
        pass                         # the child died already; waitpid says how
    os.close(ctl)
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    poll.register(sock, select.POLLIN)
    done = False
    while not done:
        for fd, _ev in poll.poll():
            if fd == pidfd:
                done = True
            elif fd == sock:
                try:
                    data = os.read(sock, 65536)
                except OSError:
                    data = b""
                if not data:
                    poll.unregister(sock)
                    _say(f"usernet: daemon: {path} closed (the daemon stopped or died): the "
                         "command has no network any more", log_file)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
