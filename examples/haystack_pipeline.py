"""A Haystack RAG pipeline over semsearch's demo sentences, answered by Haystack's MockChatGenerator (offline).

    pip install 'semsearch-client[haystack]'
    python examples/haystack_pipeline.py --address localhost:50051 --query "what do I drink?"

retriever (the server embeds the query) -> ChatPromptBuilder -> MockChatGenerator.
"""

from __future__ import annotations

import argparse

from haystack import Pipeline
from haystack.components.builders import ChatPromptBuilder
from haystack.components.generators.chat import MockChatGenerator
from haystack.dataclasses import ChatMessage
from semsearch.integrations.haystack import (
    SemsearchDenseRetriever,
    SemsearchDocumentStore,
    SemsearchHybridRetriever,
    SemsearchLexicalRetriever,
)

RETRIEVERS = {
    "dense": SemsearchDenseRetriever,
    "lexical": SemsearchLexicalRetriever,
    "hybrid": SemsearchHybridRetriever,
}
TEMPLATE = [
    ChatMessage.from_user(
        "Answer from these passages only:\n{% for d in documents %}- {{ d.content }}\n{% endfor %}\n"
        "Question: {{ question }}"
    )
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="host:port (default SEMSEARCH_ADDRESS or localhost:50051)")
    parser.add_argument("--collection", default="demo")
    parser.add_argument("--query", default="what do I drink?")
    parser.add_argument("--mode", default="hybrid", choices=sorted(RETRIEVERS))
    args = parser.parse_args(argv)

    store = SemsearchDocumentStore(address=args.address, collection=args.collection)
    pipeline = Pipeline()
    pipeline.add_component("retriever", RETRIEVERS[args.mode](store, top_k=3))
    pipeline.add_component("prompt", ChatPromptBuilder(template=TEMPLATE, required_variables=["documents", "question"]))
    pipeline.add_component("llm", MockChatGenerator(responses="(mock LLM) The passages above answer it."))
    pipeline.connect("retriever.documents", "prompt.documents")
    pipeline.connect("prompt.prompt", "llm.messages")
    result = pipeline.run(
        {"retriever": {"query": args.query}, "prompt": {"question": args.query}},
        include_outputs_from={"retriever"},
    )

    print(f"question: {args.query}")
    for rank, doc in enumerate(result["retriever"]["documents"], 1):
        print(f"passage {rank}: [{doc.id}] {doc.content}")
    print(f"answer: {result['llm']['replies'][0].text}")


if __name__ == "__main__":
    main()
