"""A round-robin TCP load balancer in front of several API processes, as a
production load balancer sits in front of API replicas: each new connection
goes to the next backend, and a backend that refuses (its process is dead)
is skipped, so clients keep going while one replica is down. A connection
open to a backend when it dies is lost with it, as behind a real balancer.

Built on the chaos proxy (`bench/chaos_proxy.py`): its own event loop in a
daemon thread, so a busy test never stalls the traffic it forwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from bench.chaos_proxy import TcpProxy


class Balancer(TcpProxy):
    def __init__(self, backend_ports: Sequence[int], *, name: str = "balancer") -> None:
        if not backend_ports:
            raise ValueError("a balancer needs at least one backend port")
        super().__init__(backend_ports[0], name=name)
        self.backend_ports = list(backend_ports)
        # Connections forwarded, per backend port: which replicas served.
        self.served: Counter[int] = Counter()
        self._turn = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # This connection's own rotation: others accepted meanwhile move the turn on.
        first = self._turn
        self._turn += 1
        refused: OSError | None = None
        for i in range(len(self.backend_ports)):
            port = self.backend_ports[(first + i) % len(self.backend_ports)]
            try:
                pair = await asyncio.open_connection(self.target[0], port)
            except OSError as e:
                refused = e
                continue
            self.served[port] += 1
            return pair
        assert refused is not None
        raise refused
