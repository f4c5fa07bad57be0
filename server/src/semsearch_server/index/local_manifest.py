"""A local collection's manifest (format version, settings, model fingerprint) and its files' names."""

from __future__ import annotations

import json
import time
from pathlib import Path

from semsearch_server.domain import CollectionSettings, IndexSpec, ModelFingerprint, PassageConfig, SearchMode
from semsearch_server.files import atomic_write_json
from semsearch_server.index.base import CollectionBroken

# 2: passages in their own table, a BM25 index beside FAISS, settings for passages and search mode.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DATABASE = "documents.sqlite3"
SNAPSHOT = "index.faiss"
SNAPSHOT_META = "index.json"
LEXICAL_SNAPSHOT = "lexical.bin"
LEXICAL_META = "lexical.json"
COLLECTIONS_DIR = "collections"
ALIASES_FILE = "aliases.json"


def write_manifest(directory: Path, name: str, settings: CollectionSettings, fingerprint: ModelFingerprint) -> None:
    atomic_write_json(
        directory / MANIFEST,
        {
            "format_version": FORMAT_VERSION,
            "name": name,
            "index": settings.index.to_dict(),
            "passages": settings.passages.to_dict(),
            "default_mode": settings.default_mode.value,
            "model": fingerprint.to_dict(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = int(data["format_version"])
        settings_from_manifest(data)
        ModelFingerprint.from_dict(data["model"])
    except FileNotFoundError:
        raise CollectionBroken(f"{path}: missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CollectionBroken(f"{path}: unreadable manifest ({exc})") from None
    if version > FORMAT_VERSION:
        raise CollectionBroken(f"{path}: format version {version} is newer than this server's {FORMAT_VERSION}")
    return data


def settings_from_manifest(data: dict) -> CollectionSettings:
    # A format-1 manifest has neither passages nor default_mode: one vector per document, DENSE.
    return CollectionSettings(
        index=IndexSpec.from_dict(data["index"]),
        passages=PassageConfig.from_dict(data.get("passages")),
        default_mode=SearchMode(data.get("default_mode", SearchMode.DENSE.value)),
    )
