"""A LlamaIndex query engine over semsearch's demo sentences, answered by LlamaIndex's MockLLM (runs offline).

    pip install 'semsearch-client[llama-index]'
    python examples/llama_index_query_engine.py --address localhost:50051 --query "something to eat"

The store is queried by text (the server embeds the question); nothing is embedded on the client.
"""

from __future__ import annotations

import argparse

from llama_index.core import VectorStoreIndex
from llama_index.core.llms import MockLLM
from semsearch import SearchClient
from semsearch.integrations.llama_index import SemsearchEmbedding, SemsearchVectorStore


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="host:port (default SEMSEARCH_ADDRESS or localhost:50051)")
    parser.add_argument("--collection", default="demo")
    parser.add_argument("--query", default="something to eat")
    parser.add_argument("--mode", default="hybrid", choices=["default", "sparse", "hybrid", "mmr"])
    args = parser.parse_args(argv)

    with SearchClient(args.address) as client:
        store = SemsearchVectorStore(client=client, collection=args.collection)
        index = VectorStoreIndex.from_vector_store(store, embed_model=SemsearchEmbedding(client=client))
        engine = index.as_query_engine(
            llm=MockLLM(max_tokens=12), similarity_top_k=3, vector_store_query_mode=args.mode
        )
        response = engine.query(args.query)

    print(f"question: {args.query}")
    for rank, scored in enumerate(response.source_nodes, 1):
        print(f"passage {rank}: [{scored.node.node_id}] {scored.node.get_content()}")
    print(f"answer: (mock LLM) {str(response).strip()}")


if __name__ == "__main__":
    main()
