"""The doc2vec adapter: gensim's ``Doc2Vec`` behind the ``ModelAdapter`` contract.

Federated doc2vec (the Model Fusion API's ``model_type=doc2vec``) works in two steps:

1. **Vocabulary.** Each party counts the words of its training documents; the counts are summed
   (``merge_word_counts``, which does not depend on the order of the parties) and every party
   builds the same vocabulary from the sum (``build_vocab``). Ties in frequency are broken by
   the word itself, and the initial vectors depend only on the vocabulary and the seed, so all
   parties start from identical shared weights.
2. **Rounds.** A party trains ``Doc2Vec`` on its own documents from the global shared
   parameters; its document vectors stay with it from round to round. The shared parameters,
   the weights of this adapter, are the word vectors ``wv.vectors`` and the output weights
   ``syn1neg`` (negative sampling) or ``syn1`` (hierarchical softmax), one row per vocabulary
   word; ``doc2vec_fusion()`` averages them row by row.

The model file of ``model_type=doc2vec`` is a UTF-8 JSON object of ``Doc2Vec`` settings (never
a pickle), e.g. ``{"vector_size": 50, "min_count": 2, "dm": 0, "dbow_words": 1}``; an empty
file means the defaults. ``TrainConfig.epochs`` and ``learning_rate`` (gensim's ``alpha``)
drive each round; ``optimizer`` and ``batch_size`` do not apply. Give the setting ``rounds``
(the federation's number of rounds) so the learning rate decays once over the whole
federation, as in one gensim run, instead of restarting every round.

``evaluate`` measures what a document embedding is for: each evaluated document is cut in two
halves, both halves are embedded with ``infer_vector``, and ``accuracy`` is the fraction of
documents whose second half is the nearest (cosine) to their first half among all the
evaluated documents' second halves (``mrr``: the mean reciprocal rank of the true half).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedfuse._extras import import_extra
from fedfuse.data import ArrayDataset, PartyData
from fedfuse.models._config import TrainConfig
from fedfuse.models._files import ModelFileError
from fedfuse.models._registry import ModelType, register_model_type
from fedfuse.weights import SizeLimits, Weights, check_compatible

__all__ = ["DOC2VEC_SETTINGS", "Doc2VecAdapter", "merge_word_counts", "prepare_doc2vec"]

DOC2VEC_SETTINGS: dict[str, Any] = {
    "vector_size": 50,
    "window": 5,
    "min_count": 2,
    "dm": 1,
    "dbow_words": 0,
    "dm_mean": 0,
    "negative": 5,
    "hs": 0,
    "sample": 1e-3,
    "ns_exponent": 0.75,
    "epochs": 20,
    "seed": 0,
    "rounds": None,
}
"""Settings a model file may give (and their defaults). ``epochs`` is used by inference;
``rounds`` (fedfuse's own) spreads the learning-rate decay over that many rounds."""

# (type, lowest, highest) of each setting: a model file comes from someone else, and gensim
# allocates vocabulary x vector_size per matrix and loops epochs x window per word.
_FLAG = (int, 0, 1)
_SETTING_RANGES: dict[str, tuple[type, float, float]] = {
    "vector_size": (int, 1, 10_000),
    "window": (int, 1, 1_000),
    "min_count": (int, 1, 1_000_000_000),
    "dm": _FLAG,
    "dbow_words": _FLAG,
    "dm_mean": _FLAG,
    "negative": (int, 0, 100),
    "hs": _FLAG,
    "sample": (float, 0.0, 1.0),
    "ns_exponent": (float, -10.0, 10.0),
    "epochs": (int, 1, 10_000),
    "seed": (int, 0, 2**32 - 1),
    "rounds": (int, 1, 1_000_000),
}
_MAX_FILE_BYTES = 1 << 20  # a model file is a small JSON object of settings
_LIMITS = SizeLimits()  # the default caps (an immutable value)

_INFER_ALPHA = (0.025, 0.0001)  # gensim's default learning-rate range, used by inference
_FINAL_ALPHA = 0.1  # each round decays the learning rate linearly to this fraction of it


def _gensim() -> Any:
    return import_extra("gensim.models.doc2vec", "doc2vec", "model_type 'doc2vec'")


def _tokens(docs: Iterable[Any]) -> list[list[str]]:
    """Token lists as given, or raw strings tokenized with gensim's ``simple_preprocess``."""
    out = []
    for doc in docs:
        if isinstance(doc, str | np.str_):
            out.append(import_extra("gensim.utils", "doc2vec", "doc2vec").simple_preprocess(doc))
        else:
            out.append([str(t) for t in doc])
    return out


def merge_word_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum per-party word counts into one vocabulary count, in canonical order.

    The result is ordered by decreasing count, ties by the word, so it is the same whatever the
    order of the parties.
    """
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


class Doc2VecAdapter:
    """A gensim ``Doc2Vec`` for one party (document vectors are per party).

    Args:
        limits: caps on the model the vocabulary makes (rows x ``vector_size`` per matrix,
            checked against ``max_params`` before gensim allocates it).
        **settings: ``Doc2Vec`` settings among ``DOC2VEC_SETTINGS`` (stored unchanged; checked
            by type and range when used). Training always uses one worker thread, so a seeded
            run is reproducible.
    """

    def __init__(self, *, limits: SizeLimits = _LIMITS, **settings: Any) -> None:
        self.settings = settings
        self.limits = limits
        self.model: Any = None
        self.rounds_trained = 0

    @classmethod
    def from_json(cls, data: bytes | str, *, limits: SizeLimits = _LIMITS) -> Doc2VecAdapter:
        """An adapter from a model file: a JSON object of settings (empty: the defaults).

        Raises:
            ModelFileError: not a small JSON object, or a setting that is unknown, of the
                wrong type or out of range (the message names it and the allowed range).
        """
        if len(data) > _MAX_FILE_BYTES:
            raise ModelFileError(
                f"a doc2vec model file is a small JSON object of settings: this one has "
                f"{len(data):,} bytes; the limit is {_MAX_FILE_BYTES:,}"
            )
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            settings = json.loads(text) if text.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelFileError(
                f"a doc2vec model file is a JSON object of settings: {exc}"
            ) from None
        if not isinstance(settings, dict):
            raise ModelFileError("a doc2vec model file is a JSON object of settings")
        adapter = cls(limits=limits)
        adapter.settings = settings
        adapter._checked_settings()
        return adapter

    def _checked_settings(self) -> dict[str, Any]:
        unknown = sorted(set(self.settings) - set(DOC2VEC_SETTINGS))
        if unknown:
            raise ModelFileError(
                f"unknown doc2vec setting(s) {unknown}; known: {', '.join(DOC2VEC_SETTINGS)}"
            )
        for name, value in self.settings.items():
            _check_setting(name, value)
        return {**DOC2VEC_SETTINGS, **self.settings}

    @staticmethod
    def word_counts(data: ArrayDataset) -> Counter[str]:
        """How often each word occurs in ``data``'s documents (what a party shares)."""
        counts: Counter[str] = Counter()
        for words in _tokens(data.x):
            counts.update(words)
        return counts

    def build_vocab(self, word_counts: Mapping[str, int], num_documents: int) -> None:
        """Build the model on the agreed vocabulary, with one document vector per local document."""
        settings = self._checked_settings()
        settings.pop("rounds")
        self._check_size(word_counts, settings)
        model = _gensim().Doc2Vec(workers=1, **settings)
        model.dv.index_to_key = list(range(num_documents))
        model.build_vocab_from_freq(merge_word_counts([word_counts]), corpus_count=num_documents)
        if len(model.wv) == 0:
            raise ValueError(
                f"no word occurs at least min_count={settings['min_count']} times: "
                "the vocabulary is empty"
            )
        self.model = model

    def _check_size(self, word_counts: Mapping[str, int], settings: Mapping[str, Any]) -> None:
        """Refuse a vocabulary whose shared matrices would pass ``limits.max_params``."""
        rows = sum(1 for count in word_counts.values() if count >= settings["min_count"])
        matrices = 1 + bool(settings["negative"]) + bool(settings["hs"])
        self.limits.check_params(
            rows * settings["vector_size"] * matrices, "the doc2vec model of this vocabulary"
        )

    def _require_model(self) -> Any:
        if self.model is None:
            raise ValueError(
                "the doc2vec vocabulary is not built yet: call build_vocab (prepare_doc2vec)"
            )
        return self.model

    def _shared(self) -> dict[str, np.ndarray]:
        model = self._require_model()
        arrays = {"wv.vectors": model.wv.vectors}
        if model.negative:
            arrays["syn1neg"] = model.syn1neg
        if model.hs:
            arrays["syn1"] = model.syn1
        return arrays

    def vocabulary(self) -> list[str]:
        """The words, in the row order of the weights."""
        return list(self._require_model().wv.index_to_key)

    def get_weights(self) -> Weights:
        """Copies of the shared parameters (not the party's document vectors)."""
        return {name: arr.copy() for name, arr in sorted(self._shared().items())}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        shared = self._shared()
        check_compatible(shared, weights)
        for name, arr in shared.items():
            arr[...] = weights[name]

    def document_vectors(self) -> np.ndarray:
        """This party's trained document vectors (they never leave the party)."""
        return self._require_model().dv.vectors.copy()

    def fit(self, data: ArrayDataset, config: TrainConfig) -> dict[str, float]:
        """``config.epochs`` passes over the local documents, alpha from ``learning_rate`` down."""
        config.validate()
        model = self._require_model()
        if len(data) != len(model.dv):
            raise ValueError(
                f"the model holds {len(model.dv)} document vectors but the party has "
                f"{len(data)} training documents: build the vocabulary on this party's data"
            )
        if config.seed is not None:
            model.random = np.random.RandomState(config.seed)
        tagged = _gensim().TaggedDocument
        corpus = [tagged(words, [i]) for i, words in enumerate(_tokens(data.x))]
        start, end = self._alpha_range(config.learning_rate)
        model.train(
            corpus,
            total_examples=len(corpus),
            epochs=config.epochs,
            start_alpha=start,
            end_alpha=end,
        )
        self.rounds_trained += 1
        return {}  # gensim reports no training loss for doc2vec

    def _alpha_range(self, learning_rate: float) -> tuple[float, float]:
        """This round's learning rates: one linear decay to ``_FINAL_ALPHA`` of it, spread over
        ``rounds`` rounds when that setting is given, else within every round.

        Restarting the decay every round (a saw-tooth) costs doc2vec much of its quality; a
        single decay over the whole federation is what one long gensim run does.
        """
        rounds = self._checked_settings()["rounds"]
        if not rounds:
            return learning_rate, learning_rate * _FINAL_ALPHA

        def alpha(progress: float) -> float:
            return learning_rate * (1.0 - (1.0 - _FINAL_ALPHA) * min(progress, 1.0))

        i = self.rounds_trained
        return alpha(i / rounds), alpha((i + 1) / rounds)

    def predict(self, x: Sequence[Any]) -> np.ndarray:
        """Inferred document vectors ``(N, vector_size)`` for documents ``x``."""
        model = self._require_model()
        epochs = self._checked_settings()["epochs"]
        # explicit: gensim's train() overwrites the model's alpha and epochs with a round's
        return np.stack(
            [
                model.infer_vector(
                    words, alpha=_INFER_ALPHA[0], min_alpha=_INFER_ALPHA[1], epochs=epochs
                )
                for words in _tokens(x)
            ]
        )

    def evaluate(self, data: ArrayDataset) -> dict[str, float]:
        """Half-document retrieval ``accuracy`` and ``mrr`` (see the module docstring)."""
        docs = [words for words in _tokens(data.x) if len(words) >= 4]
        if len(docs) < 2:
            raise ValueError("evaluation needs at least two documents of four or more words")
        first = _unit(self.predict([d[: len(d) // 2] for d in docs]))
        second = _unit(self.predict([d[len(d) // 2 :] for d in docs]))
        similarity = first @ second.T
        rank = (similarity > np.diag(similarity)[:, None]).sum(axis=1)
        return {"accuracy": float(np.mean(rank == 0)), "mrr": float(np.mean(1.0 / (rank + 1)))}


def _check_setting(name: str, value: Any) -> None:
    """Refuse a setting of the wrong type or out of its range, naming it."""
    if name == "rounds" and value is None:
        return
    kind, low, high = _SETTING_RANGES[name]
    numeric = (int, float) if kind is float else (int,)
    is_flag = _SETTING_RANGES[name] is _FLAG and isinstance(value, bool)
    if (isinstance(value, bool) and not is_flag) or not isinstance(value, numeric):
        raise ModelFileError(
            f"doc2vec setting {name!r} must be {'a number' if kind is float else 'an integer'}, "
            f"got {value!r}"
        )
    if not low <= value <= high:
        raise ModelFileError(
            f"doc2vec setting {name!r} must be between {low} and {high}, got {value!r}"
        )


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def prepare_doc2vec(adapters: Sequence[Doc2VecAdapter], data: Sequence[Any]) -> dict[str, int]:
    """Agree on one vocabulary for ``adapters`` from their parties' training ``data``.

    ``data`` holds one ``ArrayDataset`` (or ``PartyData``, whose train split is used) per
    adapter. Returns the merged word counts. In a deployment only these counts travel.
    """
    trains = [d.train if isinstance(d, PartyData) else d for d in data]
    if len(trains) != len(adapters):
        raise ValueError(f"got {len(adapters)} adapters but {len(trains)} datasets")
    merged = merge_word_counts(Doc2VecAdapter.word_counts(d) for d in trains)
    for adapter, train in zip(adapters, trains, strict=True):
        adapter.build_vocab(merged, len(train))
    return merged


def _load_doc2vec(
    data: bytes, allowed_import_paths: Sequence[str], *, limits: SizeLimits = _LIMITS
) -> Doc2VecAdapter:
    return Doc2VecAdapter.from_json(data, limits=limits)


register_model_type("doc2vec", ModelType(_load_doc2vec, prepare_doc2vec))
