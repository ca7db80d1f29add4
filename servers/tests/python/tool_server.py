"""A named-pipes 0.4 ToolServer for cpipe's client to talk to.

Usage: tool_server.py NAME   (the library hard-codes /tmp)
"""
import sys

from named_pipes import ToolServer

server = ToolServer(sys.argv[1], description="named-pipes test server")


@server.handler("echo")
def _echo(msg, pid):
    server.send_event("echo", pid, **{k: v for k, v in msg.items() if k not in ("pid", "cmd")})


@server.handler("stream")
def _stream(msg, pid):
    for i in range(int(msg.get("n", 3))):
        server.send_event("token", pid, text=msg.get("text", "t"), done=False)
    server.send_event("token", pid, text="", done=True)


done = server.listen()
print("ready", flush=True)
done.wait()
server._close()
