"""Federated doc2vec: vocabulary agreement, row-wise fusion, the model type and text handlers.

The end-to-end usefulness check (fused model vs each party alone on the Lee corpus) is
``examples/doc2vec_lee.py``, run by ``tests/test_examples.py``.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from fedfuse._extras import MissingExtraError
from fedfuse.data import ArrayDataset, PartyData, get_data_handler, load_lee_corpus, tokenize
from fedfuse.fusion import Update, fuse, get_fusion
from fedfuse.models import (
    Doc2VecAdapter,
    ModelFileError,
    TrainConfig,
    get_model_type,
    merge_word_counts,
    prepare_doc2vec,
)
from fedfuse.weights import SizeLimitError, SizeLimits


def _corpus(n=30):
    docs = np.empty(n, dtype=object)
    docs[:] = [tokenize(t) for t in load_lee_corpus()[:n]]
    return docs


def _parties(docs, k=3):
    return [PartyData(ArrayDataset(part, np.arange(len(part)))) for part in np.array_split(docs, k)]


def test_merged_vocabulary_does_not_depend_on_party_order():
    parties = _parties(_corpus())
    counts = [Doc2VecAdapter.word_counts(p.train) for p in parties]
    merged = [list(merge_word_counts(c).items()) for c in itertools.permutations(counts)]
    assert all(m == merged[0] for m in merged)
    first = dict(merged[0])
    assert first["the"] == sum(c["the"] for c in counts)

    def build(order):
        adapters = [Doc2VecAdapter(vector_size=8, min_count=2) for _ in order]
        prepare_doc2vec(adapters, [parties[i] for i in order])
        return adapters[0]

    a, b = build([0, 1, 2]), build([2, 0, 1])
    assert a.vocabulary() == b.vocabulary()
    assert all(first[w] >= 2 for w in a.vocabulary())  # min_count applies to the summed counts
    for name, arr in a.get_weights().items():
        np.testing.assert_array_equal(arr, b.get_weights()[name])


def test_doc2vec_fusion_averages_each_row_over_the_parties_that_trained_it():
    zeros = {"wv.vectors": np.zeros((3, 2), np.float32)}
    one = {"wv.vectors": np.array([[1, 1], [0, 0], [2, 2]], np.float32)}
    two = {"wv.vectors": np.array([[3, 3], [0, 0], [0, 0]], np.float32)}
    transform = get_fusion("doc2vec")
    updates = [Update(one, 10), Update(two, 30)]
    fused, _ = fuse(transform, updates, transform.init(zeros), zeros)
    # row 0: both trained it, weighted 10:30; row 1: nobody (unchanged); row 2: only party one
    np.testing.assert_allclose(fused.weights["wv.vectors"], [[2.5, 2.5], [0, 0], [2, 2]])
    plain, _ = fuse(get_fusion("fedavg"), updates, None, zeros)
    assert plain.weights["wv.vectors"][2, 0] == pytest.approx(0.5)  # diluted by party two


def test_model_type_doc2vec_for_hosted_parties():
    """What the service does: load the JSON model file once per party, prepare, train, fuse."""
    model_type = get_model_type("doc2vec")
    model_file = b'{"vector_size": 16, "min_count": 2, "dm": 0, "epochs": 5}'
    texts = load_lee_corpus()[:24]
    uploads = [
        PartyData(ArrayDataset(part, np.zeros(len(part), np.int64)))
        for part in np.array_split(texts, 2)
    ]
    handler = get_data_handler("20_newsgroup")
    datasets = [handler(u).train for u in uploads]
    adapters = [model_type.load(model_file, ()) for _ in datasets]
    model_type.prepare(adapters, datasets)
    initial = adapters[0].get_weights()
    assert sorted(initial) == ["syn1neg", "wv.vectors"]
    assert initial["wv.vectors"].shape == (len(adapters[0].vocabulary()), 16)
    config = TrainConfig(epochs=2, learning_rate=0.025, seed=0)
    updates = []
    for adapter, data in zip(adapters, datasets, strict=True):
        adapter.set_weights(initial)
        adapter.fit(data, config)
        delta = {n: a - initial[n] for n, a in adapter.get_weights().items()}
        updates.append(Update(delta, len(data)))
    fusion = get_fusion("doc2vec")
    fused, _ = fuse(fusion, updates, fusion.init(initial), initial)
    assert np.abs(fused.weights["syn1neg"]).sum() > 0
    vectors = adapters[1].document_vectors()
    assert vectors.shape == (len(datasets[1]), 16)  # per party, never in the weights
    metrics = adapters[0].evaluate(datasets[0])
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 < metrics["mrr"] <= 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "JSON object of settings"),
        (b"[1, 2]", "JSON object of settings"),
        (b'{"vector_size": 8, "optimizer": "adam"}', "unknown doc2vec setting"),
    ],
)
def test_bad_doc2vec_model_files_are_refused(data, message):
    with pytest.raises(ModelFileError, match=message):
        get_model_type("doc2vec").load(data, ())


def test_an_empty_model_file_means_the_defaults():
    adapter = get_model_type("doc2vec").load(b"", ())
    with pytest.raises(ValueError, match="vocabulary is not built"):
        adapter.get_weights()


def test_newsgroup_handler_drops_headers_quotes_and_signature():
    post = (
        "From: someone@example.com\nSubject: Re: engines\n\n"
        "> quoted text about boats\nThe engine runs smoothly\n-- \nsignature words"
    )
    out = get_data_handler("20_newsgroup")(PartyData(ArrayDataset(np.array([post]), [7])))
    assert list(out.train.x[0]) == ["the", "engine", "runs", "smoothly"]
    assert out.train.y.tolist() == [7]


def test_wikipedia_handler_drops_markup_and_indexes_titles():
    article = "{{Infobox|x=1}}'''Paris''' is the [[capital city|capital]] of France.<ref>a</ref>"
    out = get_data_handler("wikipedia")(
        PartyData(ArrayDataset(np.array([article, "Second article"]), np.array(["Paris", "B"])))
    )
    assert list(out.train.x[0]) == ["paris", "is", "the", "capital", "of", "france"]
    assert out.train.y.tolist() == [0, 1]  # titles are not labels


def test_text_handlers_refuse_non_text():
    with pytest.raises(ValueError, match="1-D array of document strings"):
        get_data_handler("20_newsgroup")(PartyData(ArrayDataset(np.zeros((2, 3)), [0, 1])))


def test_missing_gensim_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gensim.models.doc2vec", None)
    adapter = Doc2VecAdapter()
    with pytest.raises(MissingExtraError, match=r"pip install 'fedfuse\[doc2vec\]'"):
        adapter.build_vocab({"word": 3}, 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"self": 1}', r"unknown doc2vec setting\(s\) \['self'\]"),
        (b'{"vector_size": "big"}', "'vector_size' must be an integer, got 'big'"),
        (b'{"vector_size": 8.5}', "'vector_size' must be an integer"),
        (b'{"vector_size": 10000000}', "'vector_size' must be between 1 and 10000"),
        (b'{"window": 0}', "'window' must be between 1 and 1000"),
        (b'{"epochs": true}', "'epochs' must be an integer"),
        (b'{"sample": [1]}', "'sample' must be a number"),
        (b'{"dm": 2}', "'dm' must be between 0 and 1"),
        (b'{"rounds": -1}', "'rounds' must be between 1"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON object of settings"),
    ],
)
def test_doc2vec_settings_are_checked_by_type_and_range(data, message):
    with pytest.raises(ModelFileError, match=message):
        get_model_type("doc2vec").load(data, ())


def test_doc2vec_settings_in_range_load_and_flags_may_be_booleans():
    adapter = get_model_type("doc2vec").load(b'{"dm": false, "rounds": null, "sample": 0}', ())
    assert adapter.settings == {"dm": False, "rounds": None, "sample": 0}


def test_doc2vec_vocabulary_past_max_params_is_refused_before_gensim_builds():
    adapter = get_model_type("doc2vec").load(
        b'{"vector_size": 100, "min_count": 1}', (), limits=SizeLimits(max_params=1000)
    )
    counts = {f"w{i}": 1 for i in range(10)}  # 10 words x 100 x 2 matrices = 2,000
    with pytest.raises(SizeLimitError, match="holds 2,000 parameters; the limit is 1,000"):
        adapter.build_vocab(counts, 3)
    assert adapter.model is None
