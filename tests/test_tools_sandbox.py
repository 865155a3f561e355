"""Escape attempts against the `python` tool's sandbox, run under bubblewrap and under the fallback.

Each attempt must be refused or cut off with a result string starting `error:`. Under bwrap the snippet sees no
`/etc` (so `/etc/passwd` does not exist inside), no host folder and no network; under the fallback the audit hook
refuses the same attempts with `PermissionError: sandbox: ...`. The bwrap cases skip, with the probe's reason, on a
machine where bubblewrap is absent or cannot create namespaces."""

import os, socket, threading, time, uuid
from pathlib import Path

import pytest

from agent_forge.tools.sandbox import SANDBOX_UID, SandboxLimits, bwrap_probe, run_python

pytestmark = pytest.mark.filterwarnings("ignore:bubblewrap is unavailable")
BWRAP_OK, BWRAP_WHY = bwrap_probe()
MODES = [
    pytest.param("bwrap", marks=pytest.mark.skipif(not BWRAP_OK, reason=f"bwrap unusable here: {BWRAP_WHY}")),
    "fallback",
]
FAST = SandboxLimits(cpu_s=2, wall_s=6, file_mb=1, output_bytes=4000)


@pytest.mark.parametrize("mode", MODES)
def test_normal_snippet_runs_and_writes_its_own_folder(mode):
    r = run_python("open('f.txt', 'w').write('hi')\nprint(open('f.txt').read(), 6 * 7)", FAST, mode)
    assert (r.ok, r.text, r.sandbox) == (True, "hi 42", mode)


@pytest.mark.parametrize("mode", MODES)
def test_reading_etc_passwd_fails(mode):
    r = run_python("print(open('/etc/passwd').read())", FAST, mode)
    assert "root:" not in r.stdout
    want = "FileNotFoundError" if mode == "bwrap" else "PermissionError: sandbox: reading /etc/passwd is not allowed"
    assert r.text.startswith("error: exit status 1") and want in r.text, r.text


@pytest.mark.parametrize("mode", MODES)
def test_writing_outside_the_folder_fails(mode, tmp_path):
    os.chmod(tmp_path, 0o777)  # writable by the sandbox user too: only the sandbox may stop the write
    target = tmp_path / f"escape-{uuid.uuid4().hex}.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')", "open('/usr/escape.txt', 'w').write('x')"):
        r = run_python(code, FAST, mode)
        assert r.text.startswith("error: exit status 1") and ("Error" in r.text), r.text
    assert not target.exists() and not Path("/usr/escape.txt").exists()


@pytest.mark.parametrize("mode", MODES)
def test_socket_reaches_nothing(mode):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(8)
    got = []
    threading.Thread(target=lambda: got.append(_accept(srv)), daemon=True).start()
    port = srv.getsockname()[1]
    r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'hi')", FAST, mode)
    srv.close()
    assert r.text.startswith("error: exit status 1"), r.text
    want = "PermissionError: sandbox: socket" if mode == "fallback" else "Error"
    assert want in r.text, r.text
    assert got in ([], [None])


def _accept(srv):
    try:
        return srv.accept()
    except OSError:
        return None


FORK_BOMB = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print('fork refused after', n, type(e).__name__)
"""


def _procs_of(uid):
    return sum(1 for d in Path("/proc").iterdir() if d.name.isdigit() and _uid(d) == uid)


def _uid(d):
    try:
        return d.stat().st_uid
    except OSError:
        return None


@pytest.mark.parametrize("mode", MODES)
def test_fork_bomb_is_refused_and_cleaned_up(mode):
    uid = SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    before = _procs_of(uid)
    r = run_python(FORK_BOMB, FAST, mode)
    assert r.ok and r.text.startswith("fork refused after"), r.text
    n = int(r.text.split()[3])
    assert n <= FAST.procs  # RLIMIT_NPROC (bwrap) or the audit hook (fallback: n == 0)
    if mode == "fallback":
        assert "PermissionError" in r.text
    for _ in range(50):  # the pid namespace is torn down asynchronously
        if _procs_of(uid) <= before:
            break
        time.sleep(0.1)
    assert _procs_of(uid) <= before  # no sleeping child survives the run


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_hits_the_cpu_limit(mode):
    r = run_python("while True:\n    pass", FAST, mode)
    assert r.text == "error: CPU-time limit exceeded", r.text
    assert r.wall_s < FAST.wall_s


@pytest.mark.parametrize("mode", MODES)
def test_sleeping_forever_hits_the_wall_clock(mode):
    r = run_python("import time\ntime.sleep(100)", SandboxLimits(wall_s=1.5), mode)
    assert r.text == "error: wall-clock limit of 1.5s exceeded" and r.returncode is None, r.text
    assert r.wall_s < 5


@pytest.mark.parametrize("mode", MODES)
def test_huge_output_is_cut_off(mode):
    r = run_python("while True:\n    print('x' * 10000)", FAST, mode)
    assert r.text.startswith("error: output or file-size limit exceeded"), r.text
    assert len(r.stdout) <= FAST.output_bytes and r.truncated


@pytest.mark.parametrize("mode", MODES)
def test_memory_limit(mode):
    r = run_python("x = bytearray(2 << 30)", FAST, mode)
    assert r.text == "error: exit status 1: MemoryError", r.text


def test_fallback_says_so():
    with pytest.warns(RuntimeWarning, match="fallback sandbox"):
        r = run_python("print(1)", FAST, "fallback")
    assert (r.sandbox, r.text) == ("fallback", "1") and "not a security boundary" in r.warning
