"""API keys (read-only and read-write), open health and reflection, TLS and mTLS over real sockets."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from conftest import InProcessServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from semsearch import SearchClient
from semsearch.cli import main as cli_main
from semsearch.errors import PermissionDeniedError, SemsearchError, UnauthenticatedError
from semsearch.v1 import search_service_pb2 as pb
from semsearch_server.config import ConfigError
from semsearch_server.transport.auth import RPC_CLASSES, WRITE_RPCS, ApiKeyInterceptor, Role, parse_key_file
from semsearch_server.transport.server import SERVICE_NAME

WRITE_KEY = "w-4f9c2e7d1b3a"
READ_KEY = "r-8e1d5c3b9a7f"
WRONG_KEY = "not-a-key-0c6e"
GRPCURL = Path(sys.executable).parent / "grpcurl"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, embedder, explainer):
    tmp = tmp_path_factory.mktemp("auth")
    keys = tmp / "api_keys"
    keys.write_text(f"# writers\n{WRITE_KEY}\n\n{READ_KEY} read-only  # dashboards\n")
    srv = InProcessServer(tmp / "data", embedder, explainer, api_key_file=keys)
    with SearchClient(srv.address, api_key=WRITE_KEY, timeout=60) as c:
        c.upsert([("a", "the cat sat on the mat"), ("b", "stock markets fell sharply")])
    yield srv
    srv.stop()


def client_for(srv: InProcessServer, key: str | None) -> SearchClient:
    # api_key="" overrides any SEMSEARCH_API_KEY of the environment: no key at all.
    return SearchClient(srv.address, api_key=key or "", timeout=60)


# -- API keys ----------------------------------------------------------------------------------------
def test_every_rpc_of_the_service_is_classified_and_nothing_else():
    methods = {f"/{SERVICE_NAME}/{m.name}" for m in pb.DESCRIPTOR.services_by_name["SearchService"].methods}
    assert set(RPC_CLASSES) == methods
    assert WRITE_RPCS == {f"/{SERVICE_NAME}/{name}" for name in ("Upsert", "UpsertStream", "Delete")} | {
        f"/{SERVICE_NAME}/{name}" for name in ("UpdateAttributes", "CreateCollection", "DeleteCollection", "Reindex")
    } | {
        f"/{SERVICE_NAME}/{name}"
        for name in ("SetAlias", "DeleteAlias", "CreateSnapshot", "DeleteSnapshot", "RestoreSnapshot")
    }


class _Aborted(Exception):
    pass


class _Context:
    def abort(self, code, details):
        raise _Aborted(code, details)


@pytest.mark.parametrize("key", [WRITE_KEY, READ_KEY])
def test_an_unclassified_rpc_is_refused_to_every_key(key):
    """A future RPC nobody classified stays closed, even to a read-write key."""
    interceptor = ApiKeyInterceptor([(WRITE_KEY, Role.READ_WRITE), (READ_KEY, Role.READ_ONLY)])
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: "served")
    details = SimpleNamespace(
        method=f"/{SERVICE_NAME}/Compact", invocation_metadata=(("authorization", f"Bearer {key}"),)
    )
    refused = interceptor.intercept_service(lambda _: handler, details)
    with pytest.raises(_Aborted) as info:
        refused.unary_unary(None, _Context())
    assert info.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "not classified" in info.value.args[1]
    details.method = f"/{SERVICE_NAME}/Search"  # the same key on a classified read is served
    assert interceptor.intercept_service(lambda _: handler, details).unary_unary(None, _Context()) == "served"


@pytest.mark.parametrize("key", [None, WRONG_KEY])
def test_missing_or_wrong_key_is_unauthenticated(auth_server, key):
    with client_for(auth_server, key) as c, pytest.raises(UnauthenticatedError) as info:
        c.search("cat")
    assert "authorization: Bearer" in info.value.details
    assert WRONG_KEY not in info.value.details


def test_other_scheme_is_unauthenticated(auth_server):
    metadata = (("authorization", f"Basic {WRITE_KEY}"),)
    with SearchClient(auth_server.address, api_key="") as c, pytest.raises(grpc.RpcError) as info:
        c.stub.ListCollections(pb.ListCollectionsRequest(), metadata=metadata, timeout=60)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_read_only_key_reads_but_cannot_write(auth_server):
    with client_for(auth_server, READ_KEY) as reader, client_for(auth_server, WRITE_KEY) as writer:
        assert reader.search("cat", top_k=1)[0].id == "a"
        assert {c.name for c in reader.list_collections()} >= {"default"}
        before = writer.get(["a", "b", "z"])
        refused = [
            lambda: reader.upsert([("z", "should not be stored")]),
            lambda: reader.upsert_stream([[("z", "should not be stored")]]),
            lambda: reader.delete(["a"]),
            lambda: reader.create_collection("made-by-reader"),
            lambda: reader.delete_collection("default"),
            lambda: reader.reindex(),
        ]
        for call in refused:
            with pytest.raises(PermissionDeniedError, match="read-write API key"):
                call()
        assert writer.get(["a", "b", "z"]) == before
        assert "made-by-reader" not in {c.name for c in writer.list_collections()}


def test_write_key_writes(auth_server):
    with client_for(auth_server, WRITE_KEY) as writer:
        assert writer.upsert([("c", "a dog chased the ball")]) == 1
        assert writer.upsert_stream([[("d", "one")], [("e", "two")]]) == 2
        writer.create_collection("made-by-writer")
        writer.delete_collection("made-by-writer")
        assert writer.delete(["c", "d", "e"]) == 3


def test_health_and_reflection_need_no_key(auth_server):
    with client_for(auth_server, None) as c:
        assert c.health() == "SERVING"
    out = subprocess.run(
        [str(GRPCURL), "-plaintext", auth_server.address, "list"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert SERVICE_NAME in out.stdout.split()


def test_keys_never_reach_the_log(auth_server, caplog):
    caplog.set_level(logging.DEBUG)
    for key in (WRITE_KEY, READ_KEY, WRONG_KEY):
        with client_for(auth_server, key) as c:
            try:
                c.upsert([("k", "logged?")])
            except SemsearchError:
                pass
    assert len([r for r in caplog.records if r.name == "semsearch_server.access"]) >= 3
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    for key in (WRITE_KEY, READ_KEY, WRONG_KEY):
        assert key not in logged


def test_key_file_syntax(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\n\n  k1  \nk2 read-only # trailing comment\nk3 read-write\n")
    assert parse_key_file(path) == [("k1", Role.READ_WRITE), ("k2", Role.READ_ONLY), ("k3", Role.READ_WRITE)]
    path.write_text("k1\nsecret-in-bad-line admin\n")
    with pytest.raises(ConfigError, match="line 2") as info:
        parse_key_file(path)
    assert "secret-in-bad-line" not in str(info.value)
    path.write_text("# nothing but comments\n")
    with pytest.raises(ConfigError, match="no keys"):
        parse_key_file(path)


# -- TLS ---------------------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _issue(
    directory: Path, name: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None, leaf_usage=None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path, Path]:
    """A CA (ca=None) or a leaf certificate signed by `ca`, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_key, issuer_name = (key, _name(name)) if ca is None else (ca[0], ca[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([leaf_usage]), critical=False)
    if leaf_usage == ExtendedKeyUsageOID.SERVER_AUTH:
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = _write(directory / name, key, cert)
    return key, cert, cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a stranger CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca_path, _ = _issue(d, "test-ca", None)
    _, _, server_cert, server_key = _issue(d, "server", (ca_key, ca_cert), ExtendedKeyUsageOID.SERVER_AUTH)
    _, _, client_cert, client_key = _issue(d, "client", (ca_key, ca_cert), ExtendedKeyUsageOID.CLIENT_AUTH)
    _, _, other_ca, _ = _issue(d, "other-ca", None)
    return {
        "ca": ca_path,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "other_ca": other_ca,
    }


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, embedder, explainer, pki):
    srv = InProcessServer(
        tmp_path_factory.mktemp("tls"), embedder, explainer, tls_cert=pki["server_cert"], tls_key=pki["server_key"]
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, embedder, explainer, pki):
    srv = InProcessServer(
        tmp_path_factory.mktemp("mtls"),
        embedder,
        explainer,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_client_trusting_the_ca_talks_to_the_server(tls_server, pki, host):
    with SearchClient(f"{host}:{tls_server.port}", tls_ca=str(pki["ca"]), timeout=60) as c:
        assert c.health() == "SERVING"
        assert c.upsert([("t1", "encrypted in transit")]) == 1
        assert c.search("encrypted", top_k=1)[0].id == "t1"


def test_cli_health_over_tls(tls_server, pki, capsys):
    assert cli_main(["health", "--address", tls_server.address, "--tls-ca", str(pki["ca"])]) == 0
    assert "SERVING" in capsys.readouterr().out


@pytest.mark.parametrize("ca", [None, "other_ca"])
def test_plaintext_or_untrusting_client_fails_against_tls(tls_server, pki, ca):
    tls_ca = str(pki[ca]) if ca else None
    with SearchClient(tls_server.address, tls_ca=tls_ca, timeout=10) as c, pytest.raises(SemsearchError) as info:
        c.list_collections()
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_mtls_accepts_a_client_certificate(mtls_server, pki):
    with SearchClient(
        mtls_server.address,
        tls_ca=str(pki["ca"]),
        tls_cert=str(pki["client_cert"]),
        tls_key=str(pki["client_key"]),
        timeout=60,
    ) as c:
        assert c.health() == "SERVING"
        assert [x.name for x in c.list_collections()] == ["default"]


def test_mtls_refuses_a_client_without_certificate(mtls_server, pki):
    with (
        SearchClient(mtls_server.address, tls_ca=str(pki["ca"]), timeout=10) as c,
        pytest.raises(SemsearchError) as info,
    ):
        c.list_collections()
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
