"""Index stores: vectors in FAISS, documents and the write log in SQLite."""
