"""Drives `cpipe mcp` with the official MCP Python SDK (PyPI `mcp`), against a live echo server.

Usage: mcp_client.py CPIPE_BIN PIPE_DIR MODE, where MODE is `auto` (the SDK's default: the
2026-07-28 revision through server/discover) or `legacy` (the initialize handshake). The pipe
directory holds a running echo server named `echo`. Exits non-zero on the first failed check.
"""

import asyncio
import subprocess
import sys

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

CPIPE, DIR, MODE = sys.argv[1], sys.argv[2], sys.argv[3]


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def text_of(result):
    return "".join(c.text for c in result.content if c.type == "text")


async def main():
    changes = []

    async def on_message(message):
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            changes.append(message)

    params = StdioServerParameters(command=CPIPE, args=["mcp", "--dir", DIR])
    async with Client(params, mode=MODE, message_handler=on_message, read_timeout_seconds=30) as client:
        expected = "2026-07-28" if MODE == "auto" else "2025-11-25"
        check(client.protocol_version == expected, f"negotiated {client.protocol_version}")

        names = {t.name for t in (await client.list_tools()).tools}
        fixed = {"list_servers", "describe_server", "call", "send", "read_output", "cancel", "stop_server"}
        check(fixed <= names, f"fixed tools listed: {sorted(fixed - names) or 'all'}")
        check({"echo.echo", "echo.stream"} <= names, "the echo server's commands are tools")
        check("echo.ping" not in names, "built-in commands are not tools of their own")

        listed = await client.call_tool("list_servers", {})
        servers = {s["name"]: s for s in listed.structured_content["servers"]}
        check(servers["echo"]["status"] == "alive" and servers["echo"]["state"] == "running",
              "list_servers shows echo alive and running")
        check("echo" in text_of(listed), "list_servers prints a table")

        described = await client.call_tool("describe_server", {"server": "echo"})
        commands = [c["name"] for c in described.structured_content["interface"]["commands"]]
        check("stream" in commands and "stream" in text_of(described), "describe_server lists stream")
        check("echo: a test server" in text_of(described), "describe_server includes the help text")

        result = await client.call_tool("call", {"server": "echo", "command": "stream",
                                                 "arguments": {"n": 5, "text": "ab"}})
        check(not result.is_error and text_of(result) == "ababababab\n", f"call joins tokens: {text_of(result)!r}")
        check(result.structured_content["finished"], "call waits for the request to finish")

        result = await client.call_tool("echo.echo", {"msg": "hi"})
        check('"msg":"hi"' in text_of(result), f"generated tool echo.echo works: {text_of(result)!r}")

        # A reply larger than max_chars is cut with a marker, and the rest is readable.
        result = await client.call_tool("call", {"server": "echo", "command": "stream", "max_chars": 1000,
                                                 "arguments": {"n": 3000, "text": "0123456789"}})
        first = result.structured_content
        check("[truncated:" in text_of(result) and len(first["output"]) == 1000, "a long reply is truncated with a marker")
        rest = await client.call_tool("read_output", {"server": "echo", "request_id": first["request_id"],
                                                      "max_chars": 1_000_000})
        total = first["output"] + rest.structured_content["output"]
        check(total == "0123456789" * 3000 + "\n", "read_output returns exactly the rest")

        # send + read_output: a cursor per request returns only what is new.
        sent = await client.call_tool("send", {"server": "echo", "command": "stream",
                                               "arguments": {"n": 3, "text": "x"}})
        rid = sent.structured_content["request_id"]
        out = ""
        for _ in range(50):
            read = await client.call_tool("read_output", {"server": "echo", "request_id": rid, "wait_seconds": 1})
            out += read.structured_content["output"]
            if read.structured_content["finished"]:
                break
        check(out == "xxx\n", f"send then read_output gives the output: {out!r}")
        again = await client.call_tool("read_output", {"server": "echo", "request_id": rid})
        check(again.structured_content["output"] == "", "a second read returns nothing new")

        # The whole server's output (broadcasts included) has its own cursor.
        everything = await client.call_tool("read_output", {"server": "echo", "max_chars": 1_000_000})
        check("ababababab" in everything.structured_content["output"], "read_output without request_id sees all")
        check(everything.structured_content["state"] == "running", "read_output reports the state")
        nothing = await client.call_tool("read_output", {"server": "echo"})
        check(nothing.structured_content["output"] == "", "then nothing new")

        # One request at a time per server: busy, then cancel.
        long = await client.call_tool("send", {"server": "echo", "command": "stream",
                                               "arguments": {"n": 100_000_000, "text": "y"}})
        long_id = long.structured_content["request_id"]
        busy = await client.call_tool("send", {"server": "echo", "command": "echo"})
        check(busy.is_error and "busy" in text_of(busy) and "retry after it finishes" in text_of(busy),
              f"a second send while one runs is busy: {text_of(busy)!r}")
        cancelled = await client.call_tool("cancel", {"server": "echo", "request_id": long_id})
        check(not cancelled.is_error, "cancel succeeds")
        for _ in range(50):
            read = await client.call_tool("read_output", {"server": "echo", "request_id": long_id,
                                                          "wait_seconds": 1, "max_chars": 10})
            if read.structured_content["finished"]:
                break
        check(read.structured_content["finished"], "the cancelled request finishes")
        after = await client.call_tool("call", {"server": "echo", "command": "echo", "arguments": {"n": 1}})
        check(not after.is_error, "the server takes requests again after the cancel")

        # Bad input: proper MCP errors, never a crash.
        try:
            await client.call_tool("no_such_tool", {})
            check(False, "an unknown tool is an error")
        except MCPError as e:
            check(e.code == -32602 and "unknown tool" in str(e), f"unknown tool: {e}")
        missing = await client.call_tool("call", {"command": "ping"})
        check(missing.is_error and "missing required argument \"server\"" in text_of(missing), "missing argument")
        mistyped = await client.call_tool("read_output", {"server": "echo", "max_chars": "lots"})
        check(mistyped.is_error and "max_chars" in text_of(mistyped), "mistyped argument")
        extra = await client.call_tool("list_servers", {"verbose": True})
        check(extra.is_error and "unknown argument" in text_of(extra), "unknown argument")
        unknown_cmd = await client.call_tool("call", {"server": "echo", "command": "frobnicate"})
        check(unknown_cmd.is_error and "unknown command" in text_of(unknown_cmd), "unknown command")
        bad_args = await client.call_tool("echo.stream", {"n": "three"})
        check(bad_args.is_error and "n" in text_of(bad_args), f"wrong argument type: {text_of(bad_args)!r}")
        nobody = await client.call_tool("call", {"server": "nobody", "command": "ping"})
        check(nobody.is_error and "list_servers" in text_of(nobody), "an absent server is a tool error")
        managed = await client.call_tool("call", {"server": "echo", "command": "stop"})
        check(managed.is_error and "stop_server" in text_of(managed), "stop goes through stop_server")

        # A server that appears changes the tool list, and the client is told.
        late = subprocess.Popen([CPIPE, "--serve", "echo", "--name", "late", "--dir", DIR],
                                stderr=subprocess.DEVNULL)
        try:
            if MODE == "auto":
                async with client.listen(tools_list_changed=True) as subscription:
                    with anyio.fail_after(10):
                        async for _event in subscription:
                            break
                check(True, "subscriptions/listen reports the new server's tools")
            else:
                with anyio.fail_after(10):
                    while not changes:
                        await anyio.sleep(0.1)
                check(True, "notifications/tools/list_changed reports the new server's tools")
            # The server may still be starting when its pipe appears: list again until it answers.
            for _ in range(20):
                names = {t.name for t in (await client.list_tools()).tools}
                if "late.stream" in names:
                    break
                await anyio.sleep(0.5)
            check("late.stream" in names, "the new server's commands are listed")
            stopped = await client.call_tool("stop_server", {"server": "late"})
            check(stopped.structured_content["stopped"], "stop_server stops it")
            late.wait(timeout=10)
            check(late.returncode == 0, "the stopped server exits cleanly")
        finally:
            if late.poll() is None:
                late.kill()

        # stop_server, then the server reads as stopped, and a call to it is a tool error.
        stopped = await client.call_tool("stop_server", {"server": "echo"})
        check(stopped.structured_content["stopped"] and not stopped.is_error, f"stop_server: {text_of(stopped)}")
        gone = await client.call_tool("read_output", {"server": "echo"})
        check(not gone.is_error and gone.structured_content["state"] == "stopped", "a stopped server reads as stopped")
        vanished = await client.call_tool("echo.echo", {"msg": "hi"})
        check(vanished.is_error and "cannot reach" in text_of(vanished), "a vanished server is a tool error")
        listed = await client.call_tool("list_servers", {})
        check(all(s["name"] != "echo" for s in listed.structured_content["servers"]), "echo is gone from the list")


asyncio.run(main())
print("all checks passed")
