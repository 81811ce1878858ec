"""The real `e2b` Python SDK (pinned in scripts/requirements-test.txt) against a running vibebase,
configured only through E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (the env record's
urls.e2b_api, urls.e2b_sandbox and its secret key). Run by scripts/test (stage e2b)."""

import os
import time

import pytest
from e2b import Sandbox
from e2b.exceptions import NotFoundException, TimeoutException
from e2b.sandbox.commands.command_handle import CommandExitException


@pytest.fixture()
def sbx():
    sandbox = Sandbox.create(timeout=120)
    yield sandbox
    try:
        sandbox.kill()
    except Exception:
        pass


def test_the_sdk_is_configured_only_by_the_environment():
    assert os.environ["E2B_API_URL"].endswith("/e2b")
    assert os.environ["E2B_SANDBOX_URL"].endswith("/e2b/envd")
    assert os.environ["E2B_API_KEY"]


def test_run_commands_with_output_exit_codes_env_and_cwd(sbx):
    r = sbx.commands.run("echo hello; echo oops >&2")
    assert r.stdout == "hello\n"
    assert r.stderr == "oops\n"
    assert r.exit_code == 0
    r = sbx.commands.run("echo $GREETING from $(pwd)", envs={"GREETING": "hi"}, cwd="/tmp")
    assert r.stdout == "hi from /tmp\n"
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo partial; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "partial\n"


def test_command_timeouts_raise(sbx):
    started = time.time()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert time.time() - started < 15


def test_background_commands_can_be_waited_for_and_killed(sbx):
    handle = sbx.commands.run("sleep 0.5; echo bg-done", background=True)
    assert handle.pid > 0
    result = handle.wait()
    assert result.stdout == "bg-done\n"
    sleeper = sbx.commands.run("sleep 60", background=True)
    assert any(p.pid == sleeper.pid for p in sbx.commands.list())
    assert sleeper.kill()
    with pytest.raises(CommandExitException):
        sleeper.wait()


def test_stdin_can_be_sent(sbx):
    handle = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "value\n")
    assert handle.wait().stdout == "got:value\n"


def test_files_write_read_list_and_remove(sbx):
    info = sbx.files.write("/home/user/project/hello.txt", "hello file")
    assert info.path == "/home/user/project/hello.txt"
    assert sbx.files.read("/home/user/project/hello.txt") == "hello file"
    sbx.files.write("/home/user/project/data.bin", b"\x00\x01\xff")
    assert bytes(sbx.files.read("/home/user/project/data.bin", format="bytes")) == b"\x00\x01\xff"
    names = sorted(e.name for e in sbx.files.list("/home/user/project"))
    assert names == ["data.bin", "hello.txt"]
    assert sbx.files.exists("/home/user/project/hello.txt")
    sbx.files.make_dir("/home/user/project/sub")
    sbx.files.rename("/home/user/project/hello.txt", "/home/user/project/sub/moved.txt")
    assert sbx.commands.run("cat /home/user/project/sub/moved.txt").stdout == "hello file"
    sbx.files.remove("/home/user/project/sub")
    assert not sbx.files.exists("/home/user/project/sub")
    with pytest.raises(NotFoundException):
        sbx.files.read("/home/user/nope.txt")


def test_directory_watch_reports_changes(sbx):
    sbx.files.make_dir("/home/user/watched")
    handle = sbx.files.watch_dir("/home/user/watched")
    sbx.files.write("/home/user/watched/new.txt", "x")
    deadline = time.time() + 10
    events = []
    while time.time() < deadline and not any(e.name == "new.txt" for e in events):
        events.extend(handle.get_new_events())
        time.sleep(0.2)
    handle.stop()
    assert any(e.name == "new.txt" for e in events), events


def test_pty_runs_an_interactive_shell(sbx):
    from e2b.sandbox.commands.command_handle import PtySize

    output = []
    handle = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(handle.pid, b"stty size; echo pty-$((40+2)); exit\n")
    handle.wait(on_pty=lambda data: output.append(bytes(data)))
    text = b"".join(output).decode(errors="replace")
    assert "pty-42" in text, text
    assert "30 100" in text, text


def test_kill_ends_the_sandbox():
    sandbox = Sandbox.create(timeout=60)
    assert sandbox.is_running()
    sandbox_id = sandbox.sandbox_id
    sandbox.kill()
    assert not sandbox.is_running()
    with pytest.raises(Exception):
        Sandbox.connect(sandbox_id)
