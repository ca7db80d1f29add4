"""named-pipes 0.4 ToolClient against a cpipe server: prints what it received as JSON.

Usage: tool_client.py NAME   (the library hard-codes /tmp)
"""
import json
import queue
import sys

from named_pipes import ToolClient

name = sys.argv[1]
events = queue.Queue()
result = {}

with ToolClient(name) as client:
    for event in ("pong", "echo", "token", "state", "error", "help", "description"):
        client.on(event)(events.put)

    def ask(cmd, **fields):
        client.send_command(cmd, **fields)
        return events.get(timeout=10)

    result["pong"] = ask("ping")
    result["echo"] = ask("echo", data={"n": [1, 2]}, text="héllo")
    result["state"] = ask("get_state")
    result["help"] = ask("get_help")
    result["error"] = ask("no_such_command")
    client.send_command("stream", n=5, text="tok")
    tokens = []
    while True:
        e = events.get(timeout=10)
        tokens.append(e)
        if e.get("done"):
            break
    result["tokens"] = tokens

print(json.dumps(result))
