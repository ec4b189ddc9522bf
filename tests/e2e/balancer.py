"""A TCP load balancer for tests: the one address in front of several replicas' REST
listeners, as production puts one in front of them (PROVISIONER_OAUTH_ISSUER names it).

Each connection goes to the next backend in turn that accepts it within a second, so a
killed replica is skipped as a health-checked balancer skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator

from tests.ports import free_port


class Balancer:
    def __init__(self) -> None:
        self.backends: list[tuple[str, int]] = []
        self.port = free_port()
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="balancer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").rpartition(":")
        self.backends.append((host, int(port)))

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = next(self._turn)
        backends = self.backends[start % len(self.backends) :] + self.backends[: start % len(self.backends)]
        for host, port in backends:
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            except (OSError, TimeoutError):
                continue
            try:
                await asyncio.gather(_pipe(reader, upstream[1]), _pipe(upstream[0], writer))
            finally:
                upstream[1].close()
                writer.close()
            return
        writer.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Balancer]:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(5)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self._close(server), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    async def _close(self, server: asyncio.Server) -> None:
        """Stop listening, end every connection, and wait for their tasks."""
        server.close()
        await server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.close()
