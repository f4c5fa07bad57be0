"""The `semsearch` command: every RPC from a terminal, readable by default, `--json` for scripts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime

from google.protobuf.json_format import MessageToDict

from semsearch.client import DEFAULT_TIMEOUT, SearchClient
from semsearch.errors import SemsearchError, UnavailableError
from semsearch.types import Document, Hit

# Exit codes: 0 ok, 1 the server refused the call, 2 bad command line (argparse), 3 cannot connect.
EXIT_CALL_FAILED = 1
EXIT_UNAVAILABLE = 3


def _metadata_pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _json_default(value):
    """JSON for the attribute kinds json cannot write: timestamps as RFC 3339 (UTC)."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=_json_default)
    sys.stdout.write("\n")


def _shown_value(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _metadata_suffix(metadata) -> str:
    """'  k1=v1 k2=v2' in key order, or '' for no metadata (non-strings in their JSON spelling)."""
    return "  " + " ".join(f"{k}={_shown_value(v)}" for k, v in sorted(metadata.items())) if metadata else ""


def _hit_dict(hit: Hit) -> dict:
    out = {"id": hit.id, "score": round(hit.score, 6), "text": hit.text, "metadata": dict(sorted(hit.metadata.items()))}
    out |= {"dense_score": round(hit.dense_score, 6), "lexical_score": round(hit.lexical_score, 6)}
    if hit.passage is not None:
        out["passage"] = {"index": hit.passage.index, "start": hit.passage.start, "end": hit.passage.end}
    return out


def _passage_view(hit: Hit, highlight: bool) -> str:
    """The hit's best passage: the whole text for a one-passage document, else the passage marked as an
    excerpt (and shown in bold on a terminal)."""
    if hit.passage is None or (hit.passage.start == 0 and hit.passage.end == len(hit.text)):
        return hit.text
    passage = " ".join(hit.passage_text.split())
    if highlight:
        passage = f"\033[1m{passage}\033[0m"
    before = "…" if hit.passage.start > 0 else ""
    after = "…" if hit.passage.end < len(hit.text) else ""
    return f"{before}{passage}{after}  [passage {hit.passage.index}, chars {hit.passage.start}-{hit.passage.end}]"


def _print_hits(hits: list[Hit]) -> None:
    if not hits:
        print("no hits")
        return
    width = max(len(h.id) for h in hits)
    highlight = sys.stdout.isatty()
    for rank, hit in enumerate(hits, 1):
        meta = _metadata_suffix(hit.metadata)
        print(f"{rank:>3}. {hit.score:7.4f}  {hit.id:<{width}}  {_passage_view(hit, highlight)}{meta}")


def _doc_dict(doc: Document) -> dict:
    return {"id": doc.id, "text": doc.text, "metadata": dict(sorted(doc.metadata.items()))}


# -- commands ------------------------------------------------------------------------------------------
def cmd_upsert(client: SearchClient, args) -> int:
    doc = Document(args.id, args.text, _metadata_pairs(args.metadata, "--metadata"))
    count = client.upsert([doc], collection=args.collection)
    _print_json({"upserted_count": count}) if args.json else print(f"upserted {count} document(s)")
    return 0


def cmd_search(client: SearchClient, args) -> int:
    hits = client.search(
        args.query,
        collection=args.collection,
        top_k=args.top_k,
        min_score=args.min_score,
        filter=_metadata_pairs(args.filter, "--filter"),
        **mode_options(args),
        where=args.where,
    )
    _print_json({"hits": [_hit_dict(h) for h in hits]}) if args.json else _print_hits(hits)
    return 0


def cmd_map(client: SearchClient, args) -> int:
    from semsearch.map_view import project, write_map_png

    hits = client.search(
        args.query,
        collection=args.collection,
        top_k=args.top_k,
        **mode_options(args),
        where=args.where,
    )
    if not hits:
        print("semsearch: no hits to map", file=sys.stderr)
        return EXIT_CALL_FAILED
    # The same vectors the console maps: the Embed RPC's, of the query and of the hits' texts.
    projection = project(client.embed([args.query, *(h.text for h in hits)]))
    write_map_png(args.query, [h.id for h in hits], [h.score for h in hits], projection, args.png)
    print(f"wrote {args.png}")
    return 0


def cmd_get(client: SearchClient, args) -> int:
    docs = client.get(args.ids, collection=args.collection)
    if args.json:
        _print_json({"documents": [_doc_dict(d) for d in docs]})
    else:
        for doc in docs:
            meta = _metadata_suffix(doc.metadata)
            print(f"{doc.id}  {doc.text}{meta}")
        missing = [i for i in args.ids if i not in {d.id for d in docs}]
        if missing:
            print(f"not found: {', '.join(missing)}", file=sys.stderr)
    return 0


def cmd_delete(client: SearchClient, args) -> int:
    if bool(args.ids) == (args.where is not None):
        print("semsearch delete: give ids or --where EXPR (one of them)", file=sys.stderr)
        return 2
    count = client.delete(args.ids, collection=args.collection, where=args.where)
    _print_json({"deleted_count": count}) if args.json else print(f"deleted {count} document(s)")
    return 0


def cmd_count(client: SearchClient, args) -> int:
    count = client.count(collection=args.collection, where=args.where)
    _print_json({"count": count}) if args.json else print(count)
    return 0


def cmd_scroll(client: SearchClient, args) -> int:
    """Documents as JSON lines, page after page; stopped by --max-documents, it says the cursor to resume with."""
    cursor, written = args.cursor, 0
    while True:
        limit = args.limit if args.max_documents is None else min(args.limit, args.max_documents - written)
        page = client.scroll(collection=args.collection, where=args.where, limit=limit, cursor=cursor)
        for doc in page.documents:
            sys.stdout.write(json.dumps(_doc_dict(doc), ensure_ascii=False, default=_json_default) + "\n")
        written += len(page.documents)
        cursor = page.next_cursor
        if not cursor:
            return 0
        if args.max_documents is not None and written >= args.max_documents:
            sys.stdout.flush()
            print(f"next cursor: {cursor}  (resume with --cursor {cursor})", file=sys.stderr)
            return 0


def _set_pairs(items: Sequence[str] | None) -> dict:
    """--set KEY=VALUE: VALUE in JSON (2020, 1.5, true, ["a", "b"], "text"), else taken as a string."""
    out: dict = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_update(client: SearchClient, args) -> int:
    if bool(args.ids) == (args.where is not None):
        print("semsearch update: give ids or --where EXPR (one of them)", file=sys.stderr)
        return 2
    count = client.update_attributes(
        args.ids, set=_set_pairs(args.set), unset=args.unset or (), collection=args.collection, where=args.where
    )
    _print_json({"updated_count": count}) if args.json else print(f"updated {count} document(s)")
    return 0


def cmd_explain(client: SearchClient, args) -> int:
    from semsearch.explain_view import render_attention, render_ranking, render_text, write_html, write_png

    if (args.doc_id is None) == (args.doc_text is None):
        print("semsearch explain: give exactly one of --doc-id and --doc-text", file=sys.stderr)
        return 2
    result = client.explain(
        args.query,
        doc_id=args.doc_id,
        doc_text=args.doc_text,
        collection=args.collection,
        granularity=args.granularity,
        include_attention=args.attention,
        attention_layer=args.layer,
        attention_head=args.head,
        **mode_options(args),
        top_k=args.top_k,
        filter=_metadata_pairs(args.filter, "--filter"),
        where=args.where,
    )
    doc_text = args.doc_text
    if doc_text is None:
        doc_text = client.get([args.doc_id], collection=args.collection)[0].text
    if args.png:
        write_png(result, args.png)
    if args.html:
        write_html(result, args.html)
    if args.json:
        _print_json(_explain_dict(result))
        return 0
    if result.ranking is not None:
        print(render_ranking(result))
        print()
    print(render_text(result, args.query, doc_text, top_pairs=args.top_pairs))
    if args.attention:
        print()
        print(render_attention(result, "query"))
        print()
        print(render_attention(result, "doc"))
    for path in (args.png, args.html):
        if path:
            print(f"wrote {path}")
    return 0


def _explain_dict(result) -> dict:
    def segs(items):
        return [
            {"text": s.text, "start": s.start, "end": s.end, "contribution": s.contribution, "special": s.special}
            for s in items
        ]

    out = {
        "score": result.score,
        "index_score": result.index_score,
        "query_segments": segs(result.query_segments),
        "doc_segments": segs(result.doc_segments),
        "pair_contributions": result.pair_contributions.tolist(),
        "cross_attention": result.cross_attention.tolist(),
        "query_truncated": result.query_truncated,
        "doc_truncated": result.doc_truncated,
        "notes": result.notes,
    }
    r = result.ranking
    if r is not None:
        out["ranking"] = {
            "mode": r.mode,
            "rank": r.rank,
            "top_k": r.top_k,
            "kth_score": r.kth_score,
            "dense_score": r.dense_score,
            "lexical_score": r.lexical_score,
            "lexical_terms": [
                {
                    "term": t.term,
                    "query_text": t.query_text,
                    "contribution": t.contribution,
                    "term_frequency": t.term_frequency,
                    "document_frequency": t.document_frequency,
                }
                for t in r.lexical_terms
            ],
            "passage": None if r.passage is None else vars(r.passage),
        }
        if r.excluded_by:
            out["ranking"]["excluded_by"] = r.excluded_by
        if r.mode == "hybrid":
            out["ranking"] |= {
                "fusion": r.fusion,
                "dense_weight": r.dense_weight,
                "dense_min": r.dense_min,
                "dense_max": r.dense_max,
                "lexical_max": r.lexical_max,
                "rrf_k": r.rrf_k,
                "dense_rank": r.dense_rank,
                "lexical_rank": r.lexical_rank,
            }
    if result.query_self_attention is not None:
        out["attention_layer"] = result.attention_layer
        out["attention_head"] = result.attention_head
        out["query_self_attention"] = result.query_self_attention.tolist()
        out["doc_self_attention"] = result.doc_self_attention.tolist()
    return out


def _collection_line(c) -> str:
    kind = {1: "flat", 2: "hnsw", 3: "ivf"}.get(c.index.kind, "flat")
    state = "ready" if c.state == 1 else "FAILED"
    passages = f"{c.passages.window_tokens}/{c.passages.overlap_tokens}" if c.passages.mode != 2 else "off"
    mode = {2: "lexical", 3: "hybrid"}.get(c.default_mode, "dense")
    line = f"{c.name:<24} {c.document_count:>10}  {kind:<5} {passages:<9} {mode:<7} {state}"
    return line + (f"  {c.status_message}" if c.status_message else "")


def cmd_collections(client: SearchClient, args) -> int:
    action = args.action
    if action == "create":
        info = client.create_collection(
            args.name,
            index=args.index,
            hnsw_m=args.hnsw_m,
            hnsw_ef_construction=args.hnsw_ef_construction,
            hnsw_ef_search=args.hnsw_ef_search,
            ivf_nlist=args.ivf_nlist,
            ivf_nprobe=args.ivf_nprobe,
            passages=args.passages == "on",
            window_tokens=args.window_tokens,
            overlap_tokens=args.overlap_tokens,
            default_mode=args.default_mode,
        )
        _print_json(MessageToDict(info)) if args.json else print(f"created collection {info.name}")
        return 0
    if action == "delete":
        client.delete_collection(args.name)
        _print_json({"deleted": args.name}) if args.json else print(f"deleted collection {args.name}")
        return 0
    collections = client.list_collections()
    if args.json:
        _print_json({"collections": [MessageToDict(c, always_print_fields_with_no_presence=True) for c in collections]})
    else:
        print(f"{'collection':<24} {'documents':>10}  index passages  mode    state")
        for c in collections:
            print(_collection_line(c))
    return 0


def cmd_alias(client: SearchClient, args) -> int:
    if args.action == "set":
        previous = client.set_alias(args.alias, args.collection)
        if args.json:
            _print_json({"alias": args.alias, "collection": args.collection, "previous_collection": previous})
        else:
            was = f" (was {previous})" if previous else " (new)"
            print(f"alias {args.alias} -> {args.collection or 'default'}{was}")
        return 0
    if args.action == "delete":
        client.delete_alias(args.alias)
        _print_json({"deleted": args.alias}) if args.json else print(f"deleted alias {args.alias}")
        return 0
    aliases = client.list_aliases()
    if args.json:
        _print_json({"aliases": [{"alias": a, "collection": c} for a, c in sorted(aliases.items())]})
    else:
        print(f"{'alias':<24} collection")
        for alias, collection in sorted(aliases.items()):
            print(f"{alias:<24} {collection}")
    return 0


def _snapshot_dict(s) -> dict:
    return {
        "name": s.name,
        "collection": s.collection,
        "created_at": s.created_at.ToJsonString(),
        "size_bytes": s.size_bytes,
        "document_count": s.document_count,
        "model_id": s.model_id,
    }


def cmd_snapshot(client: SearchClient, args) -> int:
    if args.action == "create":
        snap = client.create_snapshot(args.collection)
        if args.json:
            _print_json(_snapshot_dict(snap))
        else:
            print(f"created snapshot {snap.name} ({snap.document_count} documents, {snap.size_bytes} bytes)")
        return 0
    if args.action == "restore":
        info = client.restore_snapshot(args.name, args.collection)
        if args.json:
            _print_json(MessageToDict(info))
        else:
            print(f"restored snapshot {args.name} as collection {info.name} ({info.document_count} documents)")
        return 0
    if args.action == "delete":
        client.delete_snapshot(args.name)
        _print_json({"deleted": args.name}) if args.json else print(f"deleted snapshot {args.name}")
        return 0
    snapshots = client.list_snapshots(args.collection)
    if args.json:
        _print_json({"snapshots": [_snapshot_dict(s) for s in snapshots]})
    else:
        print(f"{'snapshot':<48} {'collection':<24} {'documents':>10} {'bytes':>12}  created")
        for s in snapshots:
            created = s.created_at.ToJsonString()
            print(f"{s.name:<48} {s.collection:<24} {s.document_count:>10} {s.size_bytes:>12}  {created}")
    return 0


def cmd_info(client: SearchClient, args) -> int:
    info = client.info()
    if args.json:
        _print_json(MessageToDict(info, always_print_fields_with_no_presence=True))
        return 0
    print(f"server     semsearch {info.server_version}")
    print(
        f"model      {info.model_id} ({info.dimension}-dim, {info.pooling} pooling, "
        f"window {info.max_seq_length} tokens)"
    )
    print(f"backend    {info.backend}")
    print(f"weights    sha256 {info.model_fingerprint}")
    print("collections:")
    for c in info.collections:
        print("  " + _collection_line(c))
    return 0


def cmd_health(client: SearchClient, args) -> int:
    deadline = time.monotonic() + args.wait
    while True:
        try:
            status = client.health(service=args.service, timeout=5)
        except UnavailableError:
            status = "UNREACHABLE"
        if status == "SERVING" or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    _print_json({"status": status}) if args.json else print(status)
    return 0 if status == "SERVING" else EXIT_UNAVAILABLE


def cmd_reindex(client: SearchClient, args) -> int:
    count = client.reindex(collection=args.collection, timeout=args.timeout or 3600)
    _print_json({"reindexed_count": count}) if args.json else print(f"re-embedded {count} document(s)")
    return 0


def cmd_index(client: SearchClient, args) -> int:
    from semsearch.indexer import run_index_command, run_ray_engine

    if args.engine == "ray":
        return run_ray_engine(args)
    return run_index_command(client, args)


# -- parser --------------------------------------------------------------------------------------------
def add_mode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        choices=("dense", "lexical", "hybrid"),
        default=None,
        help="dense: cosine of embeddings; lexical: BM25; hybrid: both, fused (default: the collection's)",
    )
    p.add_argument("--fusion", choices=("weighted", "rrf"), default=None, help="hybrid: how (default: the server's)")
    p.add_argument("--dense-weight", type=float, default=0.0, help="hybrid weighted: the dense share, (0, 1]")
    p.add_argument("--rrf-k", type=int, default=0, help="hybrid rrf: the k of 1/(k + rank)")


def mode_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of Search and Explain that add_mode_arguments' flags give."""
    return {"mode": args.mode, "fusion": args.fusion, "dense_weight": args.dense_weight, "rrf_k": args.rrf_k}


def add_where_argument(p: argparse.ArgumentParser, help: str = "keep the documents it matches") -> None:
    p.add_argument(
        "--where",
        "-w",
        metavar="EXPR",
        default=None,
        help=f'a typed filter, e.g. \'year >= 2020 and lang in ["en", "de"]\': {help}',
    )


def add_collection_arguments(p: argparse.ArgumentParser) -> None:
    """Options of a new collection (collections create, index --create)."""
    p.add_argument(
        "--passages",
        choices=("on", "off"),
        default="on",
        help="on: texts longer than the window are split into overlapping token windows; off: one vector per text",
    )
    p.add_argument("--window-tokens", type=int, default=0, help="passage window in model tokens (0: server default)")
    p.add_argument("--overlap-tokens", type=int, default=0, help="tokens shared by consecutive windows (0: default)")
    p.add_argument(
        "--default-mode", choices=("dense", "lexical", "hybrid"), default=None, help="mode of a search that names none"
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address", default=None, help="server host:port (env SEMSEARCH_ADDRESS, default localhost:50051)"
    )
    common.add_argument(
        "--timeout", type=float, default=None, help=f"deadline per call in seconds (default {DEFAULT_TIMEOUT:g})"
    )
    common.add_argument("--api-key", default=None, help="API key (env SEMSEARCH_API_KEY)")
    common.add_argument("--tls-ca", default=None, help="PEM CA file of the server's certificate; turns TLS on")
    common.add_argument("--tls-cert", default=None, help="client certificate (mTLS)")
    common.add_argument("--tls-key", default=None, help="client key (mTLS)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    coll = argparse.ArgumentParser(add_help=False)
    coll.add_argument("--collection", "-c", default="", help="collection (default: 'default')")

    parser = argparse.ArgumentParser(prog="semsearch", description="Command-line client of the semsearch service.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upsert", parents=[common, coll], help="store one document (replaces the same id)")
    p.add_argument("id")
    p.add_argument("text")
    p.add_argument("--metadata", "-m", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_upsert)

    p = sub.add_parser("search", parents=[common, coll], help="nearest documents to a query")
    p.add_argument("query")
    p.add_argument("--top-k", "-k", type=int, default=10)
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--filter", "-f", action="append", metavar="KEY=VALUE", help="exact metadata match (repeatable)")
    add_where_argument(p)
    add_mode_arguments(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("get", parents=[common, coll], help="documents by id")
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", parents=[common, coll], help="delete documents by id, or by filter")
    p.add_argument("ids", nargs="*")
    add_where_argument(p, "delete every document it matches (instead of ids)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("count", parents=[common, coll], help="how many documents (a filter) matches")
    add_where_argument(p)
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("scroll", parents=[common, coll], help="documents as JSON lines, in id order (resumable)")
    add_where_argument(p)
    p.add_argument("--limit", type=int, default=100, help="documents per page (at most 10000; default 100)")
    p.add_argument("--cursor", default="", help="resume where a stopped scroll said")
    p.add_argument("--max-documents", type=int, default=None, help="stop after this many and print the cursor")
    p.set_defaults(func=cmd_scroll)

    p = sub.add_parser("update", parents=[common, coll], help="set or remove attributes, by id or by filter")
    p.add_argument("ids", nargs="*")
    add_where_argument(p, "update every document it matches (instead of ids)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="VALUE in JSON (2020, true, [1, 2]) or text")
    p.add_argument("--unset", action="append", metavar="KEY", help="remove this attribute (repeatable)")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("map", parents=[common, coll], help="2-D PCA map of a query and its hits, as a PNG")
    p.add_argument("query")
    p.add_argument("--png", required=True, help="the file to write (needs semsearch-client[plot])")
    p.add_argument("--top-k", "-k", type=int, default=10)
    add_where_argument(p)
    add_mode_arguments(p)
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("explain", parents=[common, coll], help="why a query matches a document")
    p.add_argument("query")
    p.add_argument("--doc-id")
    p.add_argument("--doc-text")
    p.add_argument("--granularity", choices=("word", "token"), default="word")
    p.add_argument("--attention", action="store_true", help="also show the model's self-attention of each side")
    p.add_argument("--layer", type=int, default=-1, help="attention layer (-1 = last)")
    p.add_argument("--head", type=int, default=-1, help="attention head (-1 = mean over heads)")
    p.add_argument("--top-pairs", type=int, default=8)
    p.add_argument("--png", help="write a heatmap of the pair contributions (needs semsearch-client[plot])")
    p.add_argument("--html", help="write the heatmap as a self-contained HTML page")
    p.add_argument(
        "--top-k", "-k", type=int, default=10, help="the k you searched with: says how far the document was from it"
    )
    p.add_argument("--filter", "-f", action="append", metavar="KEY=VALUE", help="the filter you searched with")
    add_where_argument(p, "the filter you searched with: says which condition hides the document, if one does")
    add_mode_arguments(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("collections", parents=[common], help="list, create or delete collections")
    p.add_argument("action", nargs="?", choices=("list", "create", "delete"), default="list")
    p.add_argument("name", nargs="?")
    p.add_argument("--index", choices=("flat", "hnsw", "ivf"), default="flat")
    p.add_argument("--hnsw-m", type=int, default=0)
    p.add_argument("--hnsw-ef-construction", type=int, default=0)
    p.add_argument("--hnsw-ef-search", type=int, default=0)
    p.add_argument("--ivf-nlist", type=int, default=0)
    p.add_argument("--ivf-nprobe", type=int, default=0)
    add_collection_arguments(p)
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser("alias", help="point a name at a collection (blue-green switches)")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("set", parents=[common], help="create an alias, or repoint it atomically")
    a.add_argument("alias")
    a.add_argument("collection")
    a = actions.add_parser("delete", parents=[common], help="delete an alias (its collection stays)")
    a.add_argument("alias")
    actions.add_parser("list", parents=[common], help="every alias and the collection it names")
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser("snapshot", help="point-in-time copies of collections (local store)")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("create", parents=[common], help="snapshot a collection (or alias)")
    a.add_argument("collection")
    a = actions.add_parser("list", parents=[common], help="snapshots, of one collection or all")
    a.add_argument("collection", nargs="?", default="")
    a = actions.add_parser("restore", parents=[common], help="build a new collection from a snapshot")
    a.add_argument("name")
    a.add_argument("collection", help="the new collection's name")
    a = actions.add_parser("delete", parents=[common], help="delete a snapshot file")
    a.add_argument("name")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("info", parents=[common], help="model, backend and collections")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("health", parents=[common], help="the standard health check")
    p.add_argument("--service", default="semsearch.v1.SearchService")
    p.add_argument("--wait", type=float, default=0.0, help="keep asking for up to this many seconds until SERVING")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("reindex", parents=[common, coll], help="re-embed a collection's texts with the running model")
    p.set_defaults(func=cmd_reindex)

    try:
        from semsearch.indexer import add_index_arguments
    except ImportError:
        add_index_arguments = None
    if add_index_arguments is not None:
        p = sub.add_parser("index", parents=[common, coll], help="index files (JSONL, CSV/TSV, text; gzip or -)")
        add_index_arguments(p)
        p.set_defaults(func=cmd_index)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "collections" and args.action in ("create", "delete") and not args.name:
        parser.error(f"collections {args.action} needs a NAME")
    client = SearchClient(
        address=args.address,
        timeout=args.timeout or DEFAULT_TIMEOUT,
        api_key=args.api_key,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    try:
        with client:
            return args.func(client, args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except UnavailableError as exc:
        print(f"semsearch: cannot reach {client.address}: {exc.details}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except SemsearchError as exc:
        print(f"semsearch: {exc}", file=sys.stderr)
        return EXIT_CALL_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
