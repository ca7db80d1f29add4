"""A named-pipes 0.7 server that implements 0.7's TTS interface (as its registry defines it)
on 0.7's own ToolServer, without audio: text is buffered, `flush` "speaks" it at once.

Usage: np07_tts_server.py NAME. Prints "ready" once listening on /tmp/tool-NAME.
"""

import sys

from named_pipes.tools.server import ToolServer


class SilentTTSServer(ToolServer):
    def __init__(self, name):
        super().__init__(name, description="A silent TTS server on named-pipes 0.7.")
        self._buffer = []
        self.handler("text")(self._text)
        self.handler("flush")(self._flush)
        self.handler("is_speaking")(self._is_speaking)

    def _list_interfaces(self):
        return super()._list_interfaces() + ["tts"]

    def _text(self, msg, pid):
        self._buffer.append(str(msg.get("data", "")))

    def _flush(self, msg, pid):
        spoken = "".join(self._buffer)
        self._buffer.clear()
        self.send_event("speech_start")
        self.send_event("speech_end", spoken=spoken)

    def _is_speaking(self, msg, pid):
        self.send_event("is_speaking", pid, speaking=False)


with SilentTTSServer(sys.argv[1]) as server:
    done = server.listen()
    print("ready", flush=True)
    done.wait()
