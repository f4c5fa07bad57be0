"""load_config: flag > environment > TOML file > default, and errors that name the option and its source."""

from __future__ import annotations

from pathlib import Path

import pytest
from semsearch_server.config import ConfigError, ServerConfig, load_config


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "semsearch.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_given():
    config = load_config([], {})
    assert config == ServerConfig()


def test_each_level_overrides_the_one_below(tmp_path):
    toml = write_toml(tmp_path, 'port = 1111\nworkers = 3\nlog_format = "json"\n[limits]\nmax_top_k = 7\n')

    file_only = load_config(["--config", str(toml)], {})
    assert (file_only.port, file_only.workers, file_only.log_format) == (1111, 3, "json")
    assert file_only.limits.max_top_k == 7
    assert file_only.log_level == "INFO"  # untouched everywhere: the default

    env = {"SEMSEARCH_PORT": "2222", "SEMSEARCH_MAX_TOP_K": "9"}
    env_over_file = load_config(["--config", str(toml)], env)
    assert (env_over_file.port, env_over_file.workers, env_over_file.limits.max_top_k) == (2222, 3, 9)

    flag_over_env = load_config(["--config", str(toml), "--port", "3333", "--max-top-k", "11"], env)
    assert (flag_over_env.port, flag_over_env.workers, flag_over_env.limits.max_top_k) == (3333, 3, 11)


def test_config_file_can_come_from_the_environment(tmp_path):
    toml = write_toml(tmp_path, "workers = 5\n")
    assert load_config([], {"SEMSEARCH_CONFIG": str(toml)}).workers == 5


def test_empty_environment_variable_counts_as_unset(tmp_path):
    toml = write_toml(tmp_path, "port = 1111\n")
    assert load_config(["--config", str(toml)], {"SEMSEARCH_PORT": ""}).port == 1111


@pytest.mark.parametrize(
    ("argv", "environ", "toml", "expected"),
    [
        (["--port", "70000"], {}, None, "option port (from --port)"),
        ([], {"SEMSEARCH_WORKERS": "many"}, None, "option workers (from SEMSEARCH_WORKERS)"),
        ([], {}, 'log_format = "xml"\n', "option log_format (from config file)"),
        ([], {"SEMSEARCH_SEED_DEMO": "perhaps"}, None, "option seed_demo (from SEMSEARCH_SEED_DEMO)"),
    ],
)
def test_bad_value_names_option_and_source(tmp_path, argv, environ, toml, expected):
    if toml is not None:
        argv = [*argv, "--config", str(write_toml(tmp_path, toml))]
    with pytest.raises(ConfigError) as info:
        load_config(argv, environ)
    assert expected in str(info.value)


def test_unknown_key_in_file_is_rejected(tmp_path):
    toml = write_toml(tmp_path, "port = 1\nmax_topk = 5\n")
    with pytest.raises(ConfigError, match="unknown option.*max_topk"):
        load_config(["--config", str(toml)], {})


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file"):
        load_config(["--config", str(tmp_path / "nope.toml")], {})


def test_tls_cert_needs_its_key(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        load_config(["--tls-cert", str(cert)], {})


def test_secret_paths_must_exist_and_describe_shows_paths_only(tmp_path):
    with pytest.raises(ConfigError, match="api_key_file"):
        load_config(["--api-key-file", str(tmp_path / "missing")], {})
    keys = tmp_path / "keys"
    keys.write_text("very-secret-key\n")
    described = load_config([], {"SEMSEARCH_API_KEY_FILE": str(keys)}).describe()
    assert described["api_key_file"] == str(keys)
    assert "very-secret-key" not in repr(described)


def test_the_milvus_store_needs_its_uri_and_never_logs_its_token(tmp_path):
    with pytest.raises(ConfigError, match="store is milvus: give milvus_uri"):
        load_config(["--store", "milvus"], {})
    with pytest.raises(ConfigError, match="option store"):
        load_config(["--store", "cassandra"], {})
    with pytest.raises(ConfigError, match="milvus_prefix"):
        load_config(["--milvus-prefix", "bad prefix"], {})
    config = load_config(
        ["--store", "milvus"], {"SEMSEARCH_MILVUS_URI": "http://milvus:19530", "SEMSEARCH_MILVUS_TOKEN": "root:s3cret"}
    )
    assert (config.store, config.milvus_uri, config.milvus_prefix) == ("milvus", "http://milvus:19530", "semsearch_")
    assert "s3cret" not in repr(config.describe())
    with pytest.raises(ConfigError, match="milvus_token: file"):
        load_config(["--store", "milvus", "--milvus-uri", "x.db", "--milvus-token", f"@{tmp_path / 'none'}"], {})


def test_the_engine_cache_is_one_per_user_whatever_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    one = load_config(["--data-dir", str(tmp_path / "a")], {})
    other = load_config(["--data-dir", str(tmp_path / "b")], {})
    assert one.model_cache_dir == other.model_cache_dir == tmp_path / "xdg" / "semsearch" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert one.model_cache_dir == Path.home() / ".cache" / "semsearch" / "engines"
    # Moved by a flag, a variable or the file, like every option.
    toml = write_toml(tmp_path, f'cache_dir = "{tmp_path / "file"}"\n')
    assert load_config(["--config", str(toml)], {}).model_cache_dir == tmp_path / "file"
    assert load_config([], {"SEMSEARCH_CACHE_DIR": str(tmp_path / "env")}).model_cache_dir == tmp_path / "env"
