"""LlamaIndex (llama-index-core 0.14) adapter: ``pip install 'semsearch-client[llama-index]'``.

``SemsearchVectorStore`` (queries by text in dense, lexical, hybrid or MMR mode; MetadataFilters translated in
``filters``), ``ServerEmbedded`` (the ingestion step that lets the server embed each text once) and
``SemsearchEmbedding`` (the Embed RPC as a BaseEmbedding).
"""

from semsearch.integrations.llama_index.embedding import SemsearchEmbedding
from semsearch.integrations.llama_index.filters import UnsupportedFilterError, convert_filters
from semsearch.integrations.llama_index.vector_store import SemsearchVectorStore, ServerEmbedded

__all__ = ["SemsearchEmbedding", "SemsearchVectorStore", "ServerEmbedded", "UnsupportedFilterError", "convert_filters"]
