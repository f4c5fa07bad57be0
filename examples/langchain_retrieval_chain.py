"""A LangChain retrieval chain over semsearch's demo sentences, answered by LangChain's fake LLM (runs offline).

    pip install 'semsearch-client[langchain]'
    python examples/langchain_retrieval_chain.py --address localhost:50051 --query "a glass of merlot"

The server (``semsearch-server --seed-demo``) embeds the question; the chain retrieves the best passages and puts
them in the prompt of the LLM, here ``FakeListLLM``, which replies with a canned answer.
"""

from __future__ import annotations

import argparse

from langchain_core.language_models.fake import FakeListLLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from semsearch import SearchClient
from semsearch.integrations.langchain import RetrievalMode, SemsearchVectorStore

PROMPT = PromptTemplate.from_template("Answer from these passages only:\n{context}\n\nQuestion: {question}\nAnswer:")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="host:port (default SEMSEARCH_ADDRESS or localhost:50051)")
    parser.add_argument("--collection", default="demo")
    parser.add_argument("--query", default="a glass of merlot")
    parser.add_argument("--mode", default="hybrid", choices=[m.value for m in RetrievalMode])
    args = parser.parse_args(argv)

    with SearchClient(args.address) as client:
        store = SemsearchVectorStore(client=client, collection=args.collection)
        retriever = store.as_retriever(mode=args.mode, search_kwargs={"k": 3})
        passages = retriever.invoke(args.query)
        llm = FakeListLLM(responses=[f"(fake LLM) The passages mention: {passages[0].page_content}"])

        def context(docs) -> str:
            return "\n".join(f"- {d.page_content}" for d in docs)

        chain = {"context": retriever | RunnableLambda(context), "question": RunnablePassthrough()} | PROMPT | llm
        answer = (chain | StrOutputParser()).invoke(args.query)

    print(f"question: {args.query}")
    for rank, doc in enumerate(passages, 1):
        print(f"passage {rank}: [{doc.id}] {doc.page_content}")
    print(f"answer: {answer}")


if __name__ == "__main__":
    main()
