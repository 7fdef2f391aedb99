"""Federated doc2vec on gensim's bundled Lee corpus: is the fused model useful?

Workload: the 300 Lee background news articles split among 3 parties (a seeded shuffle); each
party holds out a fifth of its articles. Doc2Vec, 50 dimensions, min_count 2 on the merged
vocabulary, 20 rounds of 2 local epochs (learning rate 0.025 decaying once over the 20 rounds),
inference with 50 epochs; three architectures: PV-DBOW (``dm=0``), PV-DBOW that also trains
word vectors (``dbow_words=1``), PV-DM (``dm=1``). Compared, with the same 40 epochs of
training:

- *fused (doc2vec)*: ``fusion="doc2vec"`` (rows averaged over the parties that trained them);
- *fused (fedavg)*: plain example-weighted averaging of the same shared parameters;
- *alone*: each party's own model on its own documents and vocabulary;
- *pooled*: one model on all parties' training articles (the centralized reference).

Measures: (1) Pearson correlation of the model's cosine similarities with Lee's human
judgements of 50 other articles (1225 pairs); (2) on each party's held-out articles, how often
an article's first half has its own second half as nearest neighbour (``evaluate``'s
``accuracy``; 20 articles per party, so single numbers are coarse). Seeds 0 and 1; gensim's
inference draws its random start from Python's string hash, so repeated runs differ a little.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_doc2vec.py`` (a few minutes on 2 cores).
Writes ``benchmarks/results/doc2vec.json`` and ``.md``.
"""

from __future__ import annotations

import time

import numpy as np
from _fl import machine, write

from fedfuse import Federation, LocalPool, Party, TrainConfig
from fedfuse.data import ArrayDataset, PartyData, load_lee_corpus, load_lee_similarity, tokenize
from fedfuse.models import Doc2VecAdapter, prepare_doc2vec

BASE = {"vector_size": 50, "min_count": 2, "epochs": 50}
ARCHITECTURES = {
    "PV-DBOW": {"dm": 0},
    "PV-DBOW + words": {"dm": 0, "dbow_words": 1},
    "PV-DM": {"dm": 1},
}
ROUNDS, EPOCHS, PARTIES = 20, 2, 3


def _tokens(texts) -> np.ndarray:
    out = np.empty(len(texts), dtype=object)
    out[:] = [tokenize(t) for t in texts]
    return out


def lee_correlation(adapter, documents, human) -> float:
    vectors = adapter.predict(documents)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    upper = np.triu_indices(len(human), 1)
    return float(np.corrcoef((vectors @ vectors.T)[upper], human[upper])[0, 1])


def run(settings: dict, seed: int, articles, lee_docs, human) -> dict:
    order = np.random.default_rng(seed).permutation(len(articles))
    parties = {}
    for i, part in enumerate(np.array_split(order, PARTIES)):
        held = len(part) // 5
        parties[f"party_{i}"] = PartyData(
            ArrayDataset(articles[part[held:]], part[held:]),
            ArrayDataset(articles[part[:held]], part[:held]),
        )
    out = {"seed": seed}
    for fusion in ("doc2vec", "fedavg"):
        adapters = {p: Doc2VecAdapter(**settings, seed=seed, rounds=ROUNDS) for p in parties}
        prepare_doc2vec(list(adapters.values()), list(parties.values()))
        pool = LocalPool({p: Party(adapters[p], parties[p], p) for p in parties})
        model = adapters["party_0"]
        federation = Federation(
            pool,
            model.get_weights(),
            fusion=fusion,
            config=TrainConfig(epochs=EPOCHS, learning_rate=0.025),
            seed=seed,
        )
        federation.run(ROUNDS)
        model.set_weights(federation.weights)
        out[f"fused_{fusion}_lee"] = lee_correlation(model, lee_docs, human)
        out[f"fused_{fusion}_halves"] = {
            p: model.evaluate(d.test)["accuracy"] for p, d in parties.items()
        }
    alone_config = TrainConfig(epochs=ROUNDS * EPOCHS, learning_rate=0.025, seed=seed)
    out["alone_lee"], out["alone_halves"] = {}, {}
    for pid, data in parties.items():
        alone = Doc2VecAdapter(**settings, seed=seed)
        prepare_doc2vec([alone], [data])
        alone.fit(data.train, alone_config)
        out["alone_lee"][pid] = lee_correlation(alone, lee_docs, human)
        out["alone_halves"][pid] = alone.evaluate(data.test)["accuracy"]
    pooled_train = ArrayDataset(
        np.concatenate([d.train.x for d in parties.values()]),
        np.concatenate([d.train.y for d in parties.values()]),
    )
    pooled = Doc2VecAdapter(**settings, seed=seed)
    prepare_doc2vec([pooled], [pooled_train])
    pooled.fit(pooled_train, alone_config)
    out["pooled_lee"] = lee_correlation(pooled, lee_docs, human)
    out["pooled_halves"] = {p: pooled.evaluate(d.test)["accuracy"] for p, d in parties.items()}
    return out


def main() -> None:
    articles = _tokens(load_lee_corpus())
    lee_docs, human = load_lee_similarity()
    lee_docs = _tokens(lee_docs)
    runs = []
    for architecture, extra in ARCHITECTURES.items():
        for seed in (0, 1):
            start = time.perf_counter()
            r = run({**BASE, **extra}, seed, articles, lee_docs, human)
            r.update(architecture=architecture, seconds=time.perf_counter() - start)
            runs.append(r)
            print(
                f"{architecture} seed {seed}: Lee correlation fused(doc2vec) "
                f"{r['fused_doc2vec_lee']:.3f}, fused(fedavg) {r['fused_fedavg_lee']:.3f}, "
                "alone "
                + ", ".join(f"{v:.3f}" for v in r["alone_lee"].values())
                + f", pooled {r['pooled_lee']:.3f} ({r['seconds']:.0f} s)",
                flush=True,
            )

    def mean(group, key):
        values = [
            np.mean(list(r[key].values())) if isinstance(r[key], dict) else r[key] for r in group
        ]
        return float(np.mean(values))

    columns = [
        ("fused_doc2vec_lee", "fused_doc2vec_halves"),
        ("fused_fedavg_lee", "fused_fedavg_halves"),
        ("alone_lee", "alone_halves"),
        ("pooled_lee", "pooled_halves"),
    ]
    lines = [
        "# Federated doc2vec on the Lee corpus (3 parties)",
        "",
        f"Measured on {machine()}.",
        "",
        "20 rounds x 2 local epochs (the same 40 epochs for the models trained alone or on "
        "pooled data). *Lee*: Pearson correlation with human similarity judgements of 50 "
        "articles (1225 pairs). *Halves*: share of each party's 20 held-out articles whose "
        "first half finds its own second half as nearest neighbour among them. *fused*: the "
        "federated model with ``fusion=doc2vec`` (rows averaged over the parties that trained "
        "them) or ``fedavg``; *alone*: mean of the 3 parties' own models; *pooled*: one model "
        "on all training articles. Means over seeds 0 and 1.",
        "",
        "| architecture | Lee: fused doc2vec | fused fedavg | alone | pooled "
        "| halves: fused doc2vec | fused fedavg | alone | pooled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for architecture in ARCHITECTURES:
        group = [r for r in runs if r["architecture"] == architecture]
        lee = " | ".join(f"{mean(group, a):.3f}" for a, _ in columns)
        halves = " | ".join(f"{100 * mean(group, b):.1f}%" for _, b in columns)
        lines.append(f"| {architecture} | {lee} | {halves} |")
    write("doc2vec", {"machine": machine(), "runs": runs}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
