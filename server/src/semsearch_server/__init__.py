"""semsearch server: sentence-transformers embeddings in FAISS indexes behind gRPC."""

__version__ = "0.1.0"
