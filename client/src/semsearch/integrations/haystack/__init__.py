"""Haystack (haystack-ai 3.x) adapter: ``pip install 'semsearch-client[haystack]'``.

``SemsearchDocumentStore`` is the store (thin: filters are translated in ``filters``, documents converted in
``converters``); ``SemsearchDenseRetriever``, ``SemsearchLexicalRetriever`` and ``SemsearchHybridRetriever``
query it by text.
"""

from semsearch.integrations.haystack.document_store import SemsearchDocumentStore
from semsearch.integrations.haystack.retrievers import (
    SemsearchDenseRetriever,
    SemsearchHybridRetriever,
    SemsearchLexicalRetriever,
)

__all__ = ["SemsearchDenseRetriever", "SemsearchDocumentStore", "SemsearchHybridRetriever", "SemsearchLexicalRetriever"]
