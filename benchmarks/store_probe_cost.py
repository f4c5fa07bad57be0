"""What the store health probe (store_health.py) costs a Search: p50 with and without it, side by side.

A `milvus-lite server` process and an in-process server on it (`--store milvus`), 200 short documents; then
sequential Searches (dense, top 10, through a real gRPC channel) in alternating blocks: the probe off, on at
its default interval (1 s), and on at 100 times that rate (every 10 ms), so that a cost too small to see at
1 s shows as a bound. Printed: p50 and p90 per arm and the ratio of each p50 to the probe-off p50.

Usage: python benchmarks/store_probe_cost.py [--searches 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile  # noqa: E402
from semsearch import Document, SearchClient  # noqa: E402
from semsearch_server.app import Application  # noqa: E402
from semsearch_server.config import ServerConfig  # noqa: E402
from semsearch_server.store_health import StoreHealth  # noqa: E402
from semsearch_server.transport.server import set_health  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_milvus(data: Path) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).with_name("milvus-lite")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    from semsearch_server.errors import Unavailable
    from semsearch_server.index.milvus_provider import MilvusStoreProvider

    deadline = time.monotonic() + 60
    while True:
        try:
            MilvusStoreProvider(uri, timeout=2.0).close()
            return proc, uri
        except Unavailable:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit("milvus-lite server did not answer within 60 s")
            time.sleep(0.3)


def set_probe(app: Application, interval: float | None) -> None:
    """Replaces the application's probe: None stops it, else one at `interval` seconds."""
    if app.store_health is not None:
        app.store_health.stop()
        app.store_health = None
    if interval is not None:
        ping = app.service.registry.provider.ping
        app.store_health = StoreHealth(ping, lambda up: set_health(app.health, serving=up), interval=interval)
        app.servicer.on_store_unreachable = app.store_health.unreachable
        app.store_health.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=300, help="searches per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per arm, alternating")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="probe-cost-"))
    milvus, uri = start_milvus(tmp / "milvus")
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp / "data", store="milvus", milvus_uri=uri,
                          backend="torch")  # fmt: skip
    app = Application(config)
    try:
        port = app.start()
        app.load()
        with SearchClient(f"127.0.0.1:{port}", timeout=30) as client:
            client.create_collection("probe", passages=False)
            docs = [Document(f"d{i}", f"document number {i} about rivers, hills and trains") for i in range(200)]
            client.upsert(docs, collection="probe")
            queries = [f"trains and rivers {i % 7}" for i in range(args.searches)]
            for q in queries[:50]:  # warm-up: the model, the channel, Milvus's caches
                client.search(q, collection="probe")
            arms = {"off": None, "on (1 s)": 1.0, "on (10 ms)": 0.01}
            times: dict[str, list[float]] = {name: [] for name in arms}
            order = list(arms.items())
            for round_ in range(args.rounds):
                # Each round in another order, so that a drift of the machine does not favour one arm.
                for name, interval in order[round_ % 3 :] + order[: round_ % 3]:
                    set_probe(app, interval)
                    time.sleep(0.2)
                    for q in queries:
                        started = time.perf_counter()
                        client.search(q, collection="probe")
                        times[name].append(time.perf_counter() - started)
        base = percentile(times["off"], 0.5)
        print(f"Search p50/p90 over {args.rounds} x {args.searches} sequential searches per arm (Milvus store):")
        for name, samples in times.items():
            p50, p90 = percentile(samples, 0.5), percentile(samples, 0.9)
            print(f"  probe {name:<11} p50 {p50 * 1000:7.2f} ms  p90 {p90 * 1000:7.2f} ms  p50 ratio {p50 / base:.3f}")
    finally:
        app.stop(grace=1.0)
        milvus.kill()
        milvus.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
