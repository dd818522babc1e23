"""A minimal POP3 backend for the idle-session scenario: any login is accepted, then nothing.

Usage: ``python bench/idle_backend.py HOST PORT``. Runs until SIGTERM.
It answers ``+OK`` to every command (``QUIT`` closes), so a proxy can log in.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"+OK idle backend ready\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            if line[:4].upper() == b"QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                break
            writer.write(b"+OK\r\n")
    except OSError:
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(handle, host, port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
