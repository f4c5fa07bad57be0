"""Each example in examples/ runs against the test server's demo collection and prints the passages it retrieved."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from semsearch.demo import DEMO_DOCUMENTS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO = {doc_id: text for doc_id, text, _ in DEMO_DOCUMENTS}
LINE = re.compile(r"passage (\d+): \[(\w+)\] (.+)")


@pytest.mark.parametrize(
    "script, framework, query",
    [
        ("langchain_retrieval_chain.py", "langchain_core", "a glass of merlot"),
        ("llama_index_query_engine.py", "llama_index.core", "something to eat"),
        ("haystack_pipeline.py", "haystack", "what do I drink?"),
    ],
)
def test_example_prints_the_retrieved_passages(server, script, framework, query):
    pytest.importorskip(framework)
    env = {**os.environ, "SEMSEARCH_ADDRESS": server.address, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--query", query], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == f"question: {query}"
    passages = [LINE.fullmatch(line) for line in lines[1:-1]]
    assert len(passages) == 3 and all(passages), lines
    assert [int(m[1]) for m in passages] == [1, 2, 3]
    assert all(DEMO[m[2]] == m[3] for m in passages)  # ids and texts of the demo collection
    assert lines[-1].startswith("answer: ") and len(lines[-1]) > len("answer: ")
