"""Adapters for LLM frameworks, each an optional extra of semsearch-client that imports its framework only here:

- ``semsearch.integrations.langchain`` (``pip install 'semsearch-client[langchain]'``),
- ``semsearch.integrations.llama_index`` (``[llama-index]``),
- ``semsearch.integrations.haystack`` (``[haystack]``).

The server embeds every text, so no adapter needs an embedding model on the client, and none stores a vector
computed elsewhere: queries and documents always come from the server's one model.
"""
