"""`make fuzz`: the long fuzz run against a real server process (tests/fuzz_api.py says what is checked).

    python tests/fuzz_long.py [--requests 100000] [--seed 0] [--address HOST:PORT]

Starts `python -m semsearch_server` (torch backend, the demo seeded, FUZZ_LIMITS) in a temporary data
directory unless --address names a running server, then sends --requests random calls (default
$SEMSEARCH_FUZZ_REQUESTS, else 100,000) in rounds of fresh seeds. Prints how many of each status code each
RPC answered, and exits 1 on the first UNKNOWN/INTERNAL or other undocumented code, a server that died or
stopped SERVING, or a refused request that changed something (Hypothesis then shrinks it to a minimal
request, printed with the failure).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_api import FUZZ_LIMITS, ApiFuzzer, FuzzFailure, ServerLimits, call_strategy  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

ROUND = 2_000  # examples per Hypothesis run: bounds its memory, and a progress line per round


def server_flags() -> list[str]:
    flags = ["--backend", "torch", "--seed-demo", "true"]
    for name, value in FUZZ_LIMITS.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def fuzz(fuzzer: ApiFuzzer, requests: int, first_seed: int) -> None:
    strategy = call_strategy(ServerLimits.from_config(FUZZ_LIMITS))
    started = time.monotonic()
    done = 0
    round_number = 0
    while done < requests:
        examples = min(ROUND, requests - done)

        @seed(first_seed + round_number)
        @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def run(call):
            fuzzer.check(call)

        before = sum(fuzzer.tally.total.values())
        run()
        done += examples
        round_number += 1
        sent = sum(fuzzer.tally.total.values())
        elapsed = time.monotonic() - started
        print(f"round {round_number}: {sent - before} calls ({sent} in all, {elapsed:.0f}s, {sent / elapsed:.0f}/s)")
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=int(os.environ.get("SEMSEARCH_FUZZ_REQUESTS", "100000")))
    parser.add_argument("--seed", type=int, default=0, help="seed of the first round (round i uses seed + i)")
    parser.add_argument("--address", help="fuzz this running server (started with FUZZ_LIMITS) instead")
    args = parser.parse_args()

    server = None
    if args.address:
        address, is_alive = args.address, None
    else:
        from semsearch_server.testing import ServerProcess

        data_dir = Path(tempfile.mkdtemp(prefix="semsearch-fuzz-")) / "data"
        data_dir.mkdir()
        server = ServerProcess(data_dir, *server_flags()).start()
        address = server.address
        is_alive = lambda: server.proc.poll() is None  # noqa: E731
        print(f"server pid {server.pid} on {address}, log {server.log_path}")

    fuzzer = ApiFuzzer(address, is_alive=is_alive)
    started = time.monotonic()
    failure = None
    try:
        fuzz(fuzzer, args.requests, args.seed)
    except Exception as exc:  # the shrunk failing example (or Hypothesis's word that it did not reproduce)
        failure = exc
    finally:
        elapsed = time.monotonic() - started
        print(f"\n{sum(fuzzer.tally.total.values())} calls in {elapsed:.0f}s; status codes per RPC:")
        print(fuzzer.tally.report())
        fuzzer.close()
        if server is not None:
            alive = server.proc.poll() is None
            server.stop()
            if not alive and failure is None:
                failure = FuzzFailure(f"the server exited with {server.proc.returncode}")
    if failure is not None:
        print(f"\nFAIL: {failure}")
        return 1
    print("\nPASS: no UNKNOWN/INTERNAL or undocumented code, no crash, no change by a refused request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
