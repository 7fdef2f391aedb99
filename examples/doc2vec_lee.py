"""Federated doc2vec on gensim's bundled Lee corpus, offline.

Three parties each hold a third of the 300 Lee background news articles. They agree on one
vocabulary (word counts summed; the order of the parties does not matter), train Doc2Vec
locally, and the aggregator fuses the shared parameters each round with
``fusion="doc2vec"`` (word vectors and output weights, averaged row by row over the parties
that trained them; every party's document vectors stay with it).

Is the fused model useful? Two checks, against a model each party trains on its own documents
with the same number of epochs:

- Lee's human similarity judgements of 50 other articles (1225 pairs): the Pearson correlation
  of the model's cosine similarities with the humans' (the usual doc2vec check on this corpus);
- each party's held-out articles: cut each in halves, embed both, and count how often an
  article's first half has its own second half as nearest neighbour (``Doc2VecAdapter.evaluate``).

Run: ``python examples/doc2vec_lee.py``.
"""

from __future__ import annotations

import numpy as np

from fedfuse import Federation, LocalPool, Party, TrainConfig
from fedfuse.data import ArrayDataset, PartyData, load_lee_corpus, load_lee_similarity, tokenize
from fedfuse.models import Doc2VecAdapter, prepare_doc2vec

SETTINGS = {"vector_size": 50, "min_count": 2, "dm": 0, "epochs": 50, "seed": 0}
ROUNDS, EPOCHS = 20, 2


def _tokens(texts) -> np.ndarray:
    out = np.empty(len(texts), dtype=object)
    out[:] = [tokenize(t) for t in texts]
    return out


def lee_correlation(adapter: Doc2VecAdapter, documents, human: np.ndarray) -> float:
    """Pearson correlation of the model's cosine similarities with Lee's human judgements."""
    vectors = adapter.predict(documents)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    upper = np.triu_indices(len(human), 1)
    return float(np.corrcoef((vectors @ vectors.T)[upper], human[upper])[0, 1])


def main(num_parties: int = 3, seed: int = 0) -> dict:
    articles = _tokens(load_lee_corpus())
    order = np.random.default_rng(seed).permutation(len(articles))
    parties = {}
    for i, part in enumerate(np.array_split(order, num_parties)):
        held_out = len(part) // 5
        train, test = part[held_out:], part[:held_out]
        parties[f"party_{i}"] = PartyData(
            ArrayDataset(articles[train], train), ArrayDataset(articles[test], test)
        )
    lee_documents, human = load_lee_similarity()
    lee_documents = _tokens(lee_documents)

    adapters = {p: Doc2VecAdapter(**SETTINGS, rounds=ROUNDS) for p in parties}
    vocabulary = prepare_doc2vec(list(adapters.values()), list(parties.values()))
    pool = LocalPool({p: Party(adapters[p], parties[p], p) for p in parties})
    global_model = adapters["party_0"]
    federation = Federation(
        pool,
        global_model.get_weights(),
        fusion="doc2vec",
        config=TrainConfig(epochs=EPOCHS, learning_rate=0.025),
        seed=seed,
    )
    federation.run(ROUNDS)
    global_model.set_weights(federation.weights)

    result = {"vocabulary": len(vocabulary), "parties": {}}
    result["fused_lee"] = lee_correlation(global_model, lee_documents, human)
    for pid, data in parties.items():
        alone = Doc2VecAdapter(**SETTINGS)
        prepare_doc2vec([alone], [data])
        alone.fit(data.train, TrainConfig(epochs=ROUNDS * EPOCHS, learning_rate=0.025, seed=seed))
        result["parties"][pid] = {
            "local_lee": lee_correlation(alone, lee_documents, human),
            "local_halves": alone.evaluate(data.test)["accuracy"],
            "fused_halves": global_model.evaluate(data.test)["accuracy"],
        }
    for name in ("local_lee", "local_halves", "fused_halves"):
        result[f"mean_{name}"] = float(np.mean([r[name] for r in result["parties"].values()]))
    return result


if __name__ == "__main__":
    out = main()
    print(f"shared vocabulary: {out['vocabulary']} words")
    print(f"fused model: Lee correlation {out['fused_lee']:.3f}")
    for pid, r in out["parties"].items():
        print(
            f"{pid}: alone Lee {r['local_lee']:.3f}; held-out halves matched: "
            f"alone {r['local_halves']:.2f}, fused {r['fused_halves']:.2f}"
        )
