"""The official `mcp` Python SDK (pinned in scripts/requirements-test.txt) against a running vibebase:
its streamable HTTP client, given only the env record's urls.mcp and secret key (MCP_URL, MCP_KEY),
lists the env's tools and calls them in the session's sandbox. Run by scripts/test (stage sdk-mcp)."""

import asyncio
import os

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

URL = os.environ["MCP_URL"]
KEY = os.environ["MCP_KEY"]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def with_session(work, key=KEY, url=URL):
    # The SDK's recommended timeouts; the key goes in the client's headers, as the SDK documents.
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(30, read=300))
    async with http, streamable_http_client(url, http_client=http) as (read, write, session_id):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            return await work(session, init, session_id())


def text(result):
    assert [c.type for c in result.content] == ["text"], result
    return result.content[0].text


def test_initialize_and_list_the_tools():
    async def work(session, init, session_id):
        assert init.serverInfo.name == "vibebase"
        assert init.protocolVersion in ("2025-06-18", "2025-03-26")
        assert init.capabilities.tools is not None
        assert session_id and session_id.startswith("mcp_")
        await session.send_ping()
        return (await session.list_tools()).tools

    tools = run(with_session(work))
    names = {t.name for t in tools}
    assert {"bash", "read_file", "write_file", "edit_file", "glob", "grep"} <= names
    bash = next(t for t in tools if t.name == "bash")
    assert bash.inputSchema["type"] == "object"
    assert bash.inputSchema["required"] == ["command"]
    assert bash.description


def test_write_a_file_read_it_back_and_run_bash():
    async def work(session, _init, _id):
        r = await session.call_tool("write_file", {"path": "app/hello.txt", "content": "hello from the mcp sdk\n"})
        assert not r.isError, r
        r = await session.call_tool("read_file", {"path": "app/hello.txt"})
        assert (r.isError, text(r)) == (False, "hello from the mcp sdk\n")
        r = await session.call_tool("edit_file", {"path": "app/hello.txt", "old_string": "sdk", "new_string": "SDK"})
        assert not r.isError, r
        r = await session.call_tool("bash", {"command": "cat app/hello.txt && pwd && whoami"})
        assert not r.isError, r
        out = text(r)
        assert "exit code: 0" in out and "hello from the mcp SDK" in out and "/home/user" in out
        r = await session.call_tool("glob", {"pattern": "**/*.txt"})
        assert "app/hello.txt" in text(r)
        r = await session.call_tool("bash", {"command": "echo failing >&2; exit 4"})
        assert r.isError and "exit code: 4" in text(r) and "failing" in text(r)

    run(with_session(work))


def test_each_session_has_its_own_sandbox():
    async def first(session, _init, _id):
        r = await session.call_tool("write_file", {"path": "mine.txt", "content": "1"})
        assert not r.isError

    async def second(session, _init, _id):
        r = await session.call_tool("read_file", {"path": "mine.txt"})
        assert r.isError, "a new MCP session starts with a fresh workspace"

    run(with_session(first))
    run(with_session(second))


def test_an_unknown_tool_is_a_tool_error():
    async def work(session, _init, _id):
        r = await session.call_tool("drop_database", {})
        assert r.isError and "no tool named" in text(r)

    run(with_session(work))


def test_the_session_ends_when_the_client_closes():
    ids = []

    async def work(session, _init, session_id):
        ids.append(session_id)
        await session.call_tool("bash", {"command": "true"})

    run(with_session(work))
    # The client sent DELETE on close: the session id is unknown now.
    r = httpx.post(
        URL,
        headers={"Authorization": f"Bearer {KEY}", "Mcp-Session-Id": ids[0], "Accept": "application/json"},
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == -32001


def test_a_wrong_key_is_refused():
    with pytest.raises(Exception):
        run(with_session(lambda *_: asyncio.sleep(0), key="not-a-key"))
