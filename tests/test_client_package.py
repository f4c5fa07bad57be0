"""The client distribution: light imports, stubs that match proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUBS = ("search_service_pb2.py", "search_service_pb2.pyi", "search_service_pb2_grpc.py")


def test_importing_the_client_does_not_import_torch_or_faiss():
    code = (
        "import sys, semsearch, semsearch.cli, semsearch.client\n"
        "heavy = [m for m in ('torch', 'faiss', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"client imported {out.stdout.strip()}"


def test_cli_commands_start_without_numpy_until_arrays_are_needed():
    # numpy's import is about a quarter of `semsearch search`/`semsearch index` start-up.
    code = (
        "import sys, semsearch, semsearch.cli, semsearch.indexer, semsearch.readers\n"
        "print('numpy' in sys.modules)\n"
        "import semsearch.client as c\n"
        "print(c._matrix([1.0, 0.0, 0.0, 1.0], 2).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["False", "[[1.0, 0.0], [0.0, 1.0]]"]


def test_client_distribution_declares_no_heavy_dependency():
    import tomllib

    deps = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    assert not names & {"torch", "faiss-cpu", "faiss", "sentence-transformers", "transformers"}


def test_committed_stubs_match_proto(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "proto"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "semsearch/v1/search_service.proto",
        ],
        check=True,
        cwd=REPO,
    )
    for name in STUBS:
        fresh = (tmp_path / "semsearch" / "v1" / name).read_text()
        committed = (REPO / "client" / "src" / "semsearch" / "v1" / name).read_text()
        assert fresh == committed, f"client/src/semsearch/v1/{name} is stale: run `make proto`"


def test_proto_has_every_name_of_the_contract():
    from semsearch.v1 import search_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["SearchService"]
    assert service.full_name == "semsearch.v1.SearchService"
    rpcs = {m.name for m in service.methods}
    assert rpcs >= {
        "Upsert",
        "UpsertStream",
        "Delete",
        "Get",
        "Search",
        "BatchSearch",
        "Explain",
        "Embed",
        "CreateCollection",
        "ListCollections",
        "DeleteCollection",
        "GetInfo",
    }
    assert service.methods_by_name["UpsertStream"].client_streaming
    fields = {
        name: {f.name for f in pb.DESCRIPTOR.message_types_by_name[name].fields}
        for name in pb.DESCRIPTOR.message_types_by_name
    }
    assert fields["Document"] == {"id", "text", "metadata", "attributes"}
    assert fields["Hit"] == {"id", "score", "text", "metadata", "dense_score", "lexical_score", "passage", "attributes"}
    # The ranking additions (API.md, "Ranking additions").
    assert fields["Passage"] == {"index", "start", "end"}
    assert fields["HybridParams"] >= {"fusion", "dense_weight", "rrf_k"}
    assert fields["PassageConfig"] >= {"mode", "window_tokens", "overlap_tokens"}
    assert fields["SearchRequest"] >= {"mode", "hybrid"}
    assert fields["BatchSearchRequest"] >= {"mode", "hybrid"}
    assert fields["CreateCollectionRequest"] >= {"passages", "default_mode"}
    assert fields["CollectionInfo"] >= {"passages", "default_mode"}
    assert fields["ExplainRequest"] >= {"mode", "hybrid", "top_k"}
    assert fields["ExplainResponse"] >= {
        "rank",
        "kth_score",
        "lexical_terms",
        "dense_score",
        "lexical_score",
        "dense_weight",
        "passage",
    }
    assert fields["LexicalTerm"] >= {"term", "contribution"}
    enums = {name: set(e.values_by_name) for name, e in pb.DESCRIPTOR.enum_types_by_name.items()}
    assert enums["SearchMode"] == {
        "SEARCH_MODE_UNSPECIFIED",
        "SEARCH_MODE_DENSE",
        "SEARCH_MODE_LEXICAL",
        "SEARCH_MODE_HYBRID",
    }
    assert enums["Fusion"] == {"FUSION_UNSPECIFIED", "FUSION_WEIGHTED", "FUSION_RRF"}
    assert enums["PassageMode"] == {"PASSAGE_MODE_UNSPECIFIED", "PASSAGE_MODE_ON", "PASSAGE_MODE_OFF"}
    assert fields["SearchRequest"] >= {"collection", "query", "top_k", "min_score", "filter"}
    assert fields["BatchSearchRequest"] >= {"collection", "queries", "top_k", "min_score", "filter"}
    assert fields["ExplainRequest"] >= {
        "collection",
        "query",
        "doc_id",
        "doc_text",
        "granularity",
        "include_attention",
        "attention_layer",
        "attention_head",
    }
    assert fields["Segment"] == {"text", "start", "end", "contribution", "special"}
    assert fields["ExplainResponse"] >= {
        "score",
        "query_segments",
        "doc_segments",
        "pair_contributions",
        "rows",
        "cols",
        "cross_attention",
        "query_self_attention",
        "doc_self_attention",
    }
    assert fields["UpsertResponse"] == {"upserted_count"} and fields["DeleteResponse"] == {"deleted_count"}
    assert fields["EmbedResponse"] >= {"embeddings"} and fields["Embedding"] == {"values"}
    assert fields["CreateCollectionRequest"] >= {"name"}
    # Typed metadata and filters, data management (API.md): names and field numbers clients rely on.
    numbers = {
        name: {f.name: f.number for f in pb.DESCRIPTOR.message_types_by_name[name].fields}
        for name in pb.DESCRIPTOR.message_types_by_name
    }
    assert numbers["Value"] == {
        "string_value": 1,
        "int_value": 2,
        "double_value": 3,
        "bool_value": 4,
        "timestamp_value": 5,
        "list_value": 6,
    }
    assert numbers["Document"]["attributes"] == 4 and numbers["Hit"]["attributes"] == 8
    assert numbers["Condition"] == {"field": 1, "op": 2, "value": 3}
    assert numbers["Filter"] == {"condition": 1, "all": 2, "any": 3, "not": 4, "expression": 5}
    assert numbers["DeleteRequest"]["where"] == 3
    for name in ("SearchRequest", "BatchSearchRequest", "ExplainRequest", "CountRequest", "ScrollRequest"):
        assert "where" in fields[name], name
    assert "excluded_by" in fields["ExplainResponse"]
    assert fields["CountResponse"] == {"count"}
    assert fields["ScrollRequest"] == {"collection", "where", "limit", "cursor"}
    assert fields["ScrollResponse"] == {"documents", "next_cursor"}
    assert fields["UpdateAttributesRequest"] == {"collection", "ids", "where", "set", "unset"}
    assert fields["UpdateAttributesResponse"] == {"updated_count"}
    assert rpcs >= {"Count", "Scroll", "UpdateAttributes"}
    assert [v.name for v in pb.Operator.DESCRIPTOR.values] == [
        "OPERATOR_UNSPECIFIED",
        "OPERATOR_EQ",
        "OPERATOR_NE",
        "OPERATOR_LT",
        "OPERATOR_LTE",
        "OPERATOR_GT",
        "OPERATOR_GTE",
        "OPERATOR_IN",
        "OPERATOR_NOT_IN",
        "OPERATOR_EXISTS",
        "OPERATOR_CONTAINS",
    ]
    assert [v.name for v in pb.Granularity.DESCRIPTOR.values] == [
        "GRANULARITY_UNSPECIFIED",
        "GRANULARITY_WORD",
        "GRANULARITY_TOKEN",
    ]


def test_adapters_import_their_framework_only_when_their_module_is():
    code = (
        "import sys, semsearch, semsearch.integrations, semsearch.integrations._shared\n"
        "frameworks = ('langchain_core', 'llama_index', 'haystack')\n"
        "print(','.join(m for m in frameworks if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_adapter_extras_are_pinned_and_pull_no_heavy_dependency():
    import tomllib

    extras = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("langchain", "llama-index", "haystack"):
        (requirement,) = extras[name]
        assert "==" in requirement, f"extra {name} is not pinned: {requirement}"
    for name, requirements in extras.items():
        names = {r.split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in requirements}
        assert not names & {"torch", "faiss-cpu", "faiss", "sentence-transformers", "transformers"}, name
