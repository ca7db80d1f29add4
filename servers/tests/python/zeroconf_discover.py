"""Home Assistant's discovery of a Wyoming service, against `cpipe --serve wyoming --zeroconf`:
python-zeroconf (the library Home Assistant uses) browses `_wyoming._tcp.local.`, resolves the
instance named NAME, and the `wyoming` package's client asks it to describe itself at the
address and port it announced. Usage: zeroconf_discover.py NAME
Prints one line per check; exits non-zero (with the reason) on the first that fails."""

import asyncio
import sys
import time

from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

name = sys.argv[1]
SERVICE = "_wyoming._tcp.local."
wanted = f"{name}.{SERVICE}"


def check(what, condition, detail=""):
    if not condition:
        sys.exit(f"FAILED {what}: {detail}")
    print(f"ok {what}", flush=True)


class Seen(ServiceListener):
    def __init__(self):
        self.names = set()

    def add_service(self, zc, type_, name):
        self.names.add(name)

    def update_service(self, zc, type_, name):
        self.names.add(name)

    def remove_service(self, zc, type_, name):
        self.names.discard(name)


zc = Zeroconf()
seen = Seen()
ServiceBrowser(zc, SERVICE, seen)
deadline = time.time() + 20
while time.time() < deadline and wanted not in seen.names:
    time.sleep(0.1)
check("browsing _wyoming._tcp finds the bridge", wanted in seen.names, str(seen.names))
info = zc.get_service_info(SERVICE, wanted, timeout=5000)
check("its record resolves", info is not None and info.parsed_addresses(), str(info))
address, port = info.parsed_addresses()[0], info.port
zc.close()


async def describe():
    async with AsyncTcpClient(address, port) as client:
        await client.write_event(Describe().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 30)
            if event is None or Info.is_type(event.type):
                return event


event = asyncio.run(describe())
check(f"describe at {address}:{port} answers info", event is not None and Info.is_type(event.type))
print("all ok")
