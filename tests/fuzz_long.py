"""`make fuzz`: the long fuzz run against real server processes (tests/fuzz_api.py says what is checked).

    python tests/fuzz_long.py [--requests 100000] [--jobs 2] [--seed 0] [--address HOST:PORT]

Each of --jobs shards starts its own `python -m semsearch_server` (torch backend, the demo seeded,
FUZZ_LIMITS) in a temporary data directory and sends its share of --requests random calls (default
$SEMSEARCH_FUZZ_REQUESTS, else 100,000) in rounds of fresh seeds; shards share nothing, so each one's
checks see only its own writes. With --address, one shard fuzzes that running server instead (started
with FUZZ_LIMITS). Prints how many of each status code each RPC answered, and exits 1 on any UNKNOWN or
INTERNAL or other undocumented code, a server that died or stopped SERVING, or a refused request that
changed something (Hypothesis then shrinks it to a minimal request, printed with the failure).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_api import FUZZ_LIMITS, ApiFuzzer, ServerLimits, Tally, call_strategy  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

ROUND = 2_000  # examples per Hypothesis run: bounds its memory, and a progress line per round


def server_flags() -> list[str]:
    flags = ["--backend", "torch", "--seed-demo", "true"]
    for name, value in FUZZ_LIMITS.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def fuzz(fuzzer: ApiFuzzer, requests: int, first_seed: int, shard: int) -> None:
    strategy = call_strategy(ServerLimits.from_config(FUZZ_LIMITS))
    started = time.monotonic()
    done = 0
    round_number = 0
    while done < requests:
        examples = min(ROUND, requests - done)

        # No shrinking: the server's state is part of the input, so replaying a shrunk call is not the same
        # test; the failure is reported with the call that met it.
        @seed(first_seed + round_number)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def run(call):
            fuzzer.check(call)

        run()
        done += examples
        round_number += 1
        sent = sum(fuzzer.tally.total.values())
        elapsed = time.monotonic() - started
        print(
            f"shard {shard} round {round_number}: {sent} calls in {elapsed:.0f}s ({sent / elapsed:.1f}/s)", flush=True
        )


def run_shard(shard: int, requests: int, first_seed: int, address: str | None) -> tuple[dict, str | None, float]:
    """One shard: its own server (unless `address`), its own fuzzer. Returns its tally, failure and seconds."""
    server = None
    if address is None:
        from semsearch_server.testing import ServerProcess

        workdir = Path(tempfile.mkdtemp(prefix=f"semsearch-fuzz-{shard}-"))
        data_dir = workdir / "data"
        data_dir.mkdir()
        server = ServerProcess(data_dir, *server_flags())
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        address = server.address
        print(f"shard {shard}: server pid {server.pid} on {address}, log {server.log_path}", flush=True)
    is_alive = (lambda: server.proc.poll() is None) if server is not None else None
    fuzzer = ApiFuzzer(address, is_alive=is_alive)
    started = time.monotonic()
    failure = None
    try:
        fuzz(fuzzer, requests, first_seed, shard)
    except Exception as exc:  # FuzzFailure: what went wrong, and the call
        failure = "\n".join(f"{type(e).__name__}: {e}" for e in [exc, *getattr(exc, "exceptions", [])])
    finally:
        elapsed = time.monotonic() - started
        fuzzer.close()
        if server is not None:
            if server.proc.poll() is not None and failure is None:
                failure = f"the server exited with {server.proc.returncode}:\n{server.output()[-3000:]}"
            server.stop()
            if failure is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                failure += f"\n(server log: {server.log_path})"
    return {label: dict(counter) for label, counter in fuzzer.tally.by_rpc.items()}, failure, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=int(os.environ.get("SEMSEARCH_FUZZ_REQUESTS", "100000")))
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("SEMSEARCH_FUZZ_JOBS", "2")))
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the first round (shard s, round i: seed + 1000s + i)"
    )
    parser.add_argument("--address", help="fuzz this running server (started with FUZZ_LIMITS) instead; one shard")
    args = parser.parse_args()
    jobs = 1 if args.address else max(1, args.jobs)
    shares = [args.requests // jobs + (1 if s < args.requests % jobs else 0) for s in range(jobs)]

    started = time.monotonic()
    shard_args = [(s, shares[s], args.seed + 1000 * s, args.address) for s in range(jobs)]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        results = pool.starmap(run_shard, shard_args)
    elapsed = time.monotonic() - started

    tally = Tally()
    for by_rpc, _, _ in results:
        for label, counter in by_rpc.items():
            tally.by_rpc[label].update(Counter(counter))
    sent = sum(tally.total.values())
    print(f"\n{sent} calls in {elapsed:.0f}s ({sent / elapsed:.1f}/s, {jobs} shards); status codes per RPC:")
    print(tally.report())
    failures = [f"shard {s}: {failure}" for s, (_, failure, _) in enumerate(results) if failure]
    if failures:
        print("\nFAIL:\n" + "\n\n".join(failures))
        return 1
    print("\nPASS: no UNKNOWN/INTERNAL or undocumented code, no crash, no change by a refused request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
