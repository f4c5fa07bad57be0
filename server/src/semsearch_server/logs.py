"""Logging shared by the server's commands: third-party chatter kept out of a successful run's output."""

from __future__ import annotations

import logging

# Third-party loggers that narrate their own internals at INFO (faiss's CPU-feature probes; onnxruntime's
# transformer optimizer, "Fused Gelu: 6", during the one-off ONNX export): their warnings still show.
CHATTY_AT_INFO = ("faiss.loader", "fusion_base", "onnx_model", "onnx_model_bert", "fusion_utils")
# Warnings that are never about the user's situation, dropped at their logger by how they begin.
_NOT_ABOUT_THE_USER = {
    # transformers warns for every model whose config carries loss_type=None (ours does): no training here.
    "transformers.modeling_utils": ("`loss_type=None` was set in the config but it is unrecognized",),
    # Milvus Lite answers a query without the session timestamp a query iterator asks for; pymilvus then
    # uses the client's clock, which is what a single Lite process needs.
    "pymilvus.client.iterator.query_iterator": ("failed to get mvccTs from milvus server",),
}


class _Dropping(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# pymilvus logs a traceback of its own for every call that fails (27,000 lines for 10 s of a Milvus outage):
# the store turns each failure into one of the service's errors, and logs a line when health changes.
QUIET_BELOW_CRITICAL = ("pymilvus",)


def quiet_third_parties() -> None:
    for name in CHATTY_AT_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in QUIET_BELOW_CRITICAL:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for name, prefixes in _NOT_ABOUT_THE_USER.items():
        logging.getLogger(name).addFilter(_Dropping(prefixes))
