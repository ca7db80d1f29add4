"""named-pipes 0.4 ToolClient driving a cpipe tts server as its tts_client.py does: text in
pieces, flush, then wait for the speech to start and end. Prints what it saw as JSON.

Usage: tts_client.py NAME   (the library hard-codes /tmp)
"""
import json
import queue
import sys

from named_pipes import ToolClient

name = sys.argv[1]
events = queue.Queue()
seen = []

with ToolClient(name) as client:
    for event in ("speech_start", "speech_end", "is_speaking", "error"):
        client.on(event)(events.put)
    for piece in ("Hello from ", "Python. ", "This is the ", "second sentence."):
        client.send_command("text", data=piece)
    client.send_command("flush")
    while True:
        e = events.get(timeout=30)
        seen.append(e["event"])
        if e["event"] in ("speech_end", "error"):
            break
    client.send_command("is_speaking")
    while True:
        e = events.get(timeout=10)
        if e["event"] == "is_speaking":
            seen.append({"is_speaking": e["speaking"]})
            break

print(json.dumps(seen))
