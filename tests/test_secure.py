"""SecAgg+ (fedfuse.secure): exact sums under dropouts, aborts, refusals of forged or replayed
messages, lying parties, and the parameter, quantization and encoding helpers."""

from __future__ import annotations

import hashlib
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fedfuse.secure import (
    Quantizer,
    SecAggError,
    SecAggParty,
    SecAggServer,
    choose_degree,
    harary_graph,
    pack,
    shamir_combine,
    shamir_split,
    unpack,
)
from fedfuse.secure._crypto import mask_seed, prg
from fedfuse.secure._protocol import WIRE_SHARE_BYTES
from fedfuse.secure._shamir import PRIME, reconstruct

STAGES = ("advertise", "share", "mask", "unmask")


def make_round(n, size=64, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    ids = [f"p{i:02d}" for i in range(n)]
    vectors = {p: rng.integers(0, 2**32, size, dtype=np.uint32) for p in ids}
    server = SecAggServer(ids, size, **kwargs)
    parties = {p: SecAggParty(p, vectors[p]) for p in ids}
    return server, parties, vectors


def run_stage(server, parties, skip=(), wire=True, tamper=None):
    """One stage: every asked party not in ``skip`` answers (through pack/unpack except the
    masked vector); ``tamper(pid, response)`` may change a response before the server sees it."""
    for pid, request in server.requests().items():
        if pid in skip:
            continue
        if wire and request["stage"] != "mask":
            request = unpack(pack(request))
        response = parties[pid].handle(request)
        if wire and response["stage"] != "mask":
            response = unpack(pack(response))
        if tamper is not None:
            response = tamper(pid, response)
        server.receive(pid, response)
    server.advance()


def run_round(server, parties, drop=None, **kwargs):
    """``drop``: party -> the stage at which it stops answering."""
    drop = drop or {}
    for stage in STAGES:
        run_stage(server, parties, skip={p for p, s in drop.items() if s == stage}, **kwargs)
    return server.result()


def plain_sum(vectors, ids):
    total = np.zeros_like(next(iter(vectors.values())))
    for p in ids:
        total += vectors[p]
    return total


def test_protocol_errors_are_value_errors():  # (the public names are frozen in test_api)
    assert issubclass(SecAggError, ValueError)


@pytest.mark.parametrize(
    ("n", "dropout_rate", "degree"), [(2, 0.1, 1), (3, 0.1, 2), (6, 0.1, 5), (12, 0.001, 6)]
)
def test_sum_is_exact(n, dropout_rate, degree):
    server, parties, vectors = make_round(n, dropout_rate=dropout_rate)
    total = run_round(server, parties)
    assert server.degree == degree
    assert server.survivors == sorted(vectors)
    assert total.dtype == np.uint32
    np.testing.assert_array_equal(total, plain_sum(vectors, vectors))


def test_sparse_graph_with_dropouts_at_every_stage():
    server, parties, vectors = make_round(24, size=300, dropout_rate=0.01)
    drop = {"p00": "advertise", "p05": "share", "p11": "mask", "p17": "unmask"}
    total = run_round(server, parties, drop)
    assert (server.degree, server.threshold) == choose_degree(23, 0.01, 0.0) == (10, 6)
    assert server.degree < 22
    alive = sorted(set(vectors) - {"p00", "p05", "p11"})
    assert server.survivors == alive
    assert server.dropped == {
        "p00": "advertise: no answer",
        "p05": "share: no answer",
        "p11": "mask: no answer",
        "p17": "unmask: no answer",
    }
    np.testing.assert_array_equal(total, plain_sum(vectors, alive))


@pytest.mark.parametrize("stage", ["share", "mask"])
def test_dropouts_after_each_stage_complete_graph(stage):
    server, parties, vectors = make_round(6)
    total = run_round(server, parties, {"p01": stage, "p04": "advertise"})
    alive = sorted(set(vectors) - {"p01", "p04"})
    np.testing.assert_array_equal(total, plain_sum(vectors, alive))


@pytest.mark.parametrize("stage", ["share", "mask", "unmask"])
def test_abort_when_a_neighbourhood_falls_below_threshold(stage):
    server, parties, _ = make_round(5)  # complete graph, k = 4, t = 3
    for _ in STAGES[: STAGES.index(stage)]:
        run_stage(server, parties)
    assert server.threshold == 3
    with pytest.raises(SecAggError, match="below the threshold 3"):
        run_stage(server, parties, skip={"p00", "p01"})
    assert server.stage == "aborted"
    with pytest.raises(SecAggError, match="no result"):
        server.result()


def test_abort_below_min_parties():
    server, parties, _ = make_round(6, min_parties=5)
    with pytest.raises(SecAggError, match="at least 5"):
        run_stage(server, parties, skip={"p00", "p01"})


def test_party_refuses_unmask_with_too_few_surviving_neighbours():
    server, parties, _ = make_round(5)
    for _ in range(3):
        run_stage(server, parties)
    request = {**server.requests()["p00"], "survivors": ["p00", "p01"]}
    with pytest.raises(SecAggError, match="below the threshold"):
        parties["p00"].handle(request)
    request = {**server.requests()["p00"], "survivors": ["p00", "p00", "p01", "p02"]}
    with pytest.raises(SecAggError, match="without repeats"):
        parties["p00"].handle(request)
    request = {**server.requests()["p00"], "survivors": ["p01", "p02", "p03", "p04"]}
    with pytest.raises(SecAggError, match="not among the survivors"):
        parties["p00"].handle(request)


def test_unmask_reveals_one_share_per_neighbour():
    server, parties, _ = make_round(6)
    seen = {}

    def record(pid, response):
        if response["stage"] == "unmask":
            seen[pid] = response
        return response

    run_round(server, parties, {"p02": "mask"}, tamper=record)
    for response in seen.values():
        assert set(response["b_shares"]).isdisjoint(response["s_shares"])
        assert set(response["s_shares"]) == {"p02"}


def test_masked_vector_is_uniform():
    size = 1 << 16
    server, parties, _ = make_round(4, size=size)
    for p in parties:
        parties[p].vector = np.zeros(size, dtype=np.uint32)
    run_stage(server, parties)
    run_stage(server, parties)
    masked = parties["p00"].handle(server.requests()["p00"])["masked"]
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-6
    top = np.bincount(masked >> 24, minlength=256)  # the high byte of each word, too
    assert stats.chisquare(top).pvalue > 1e-6


def test_seeds_and_keys_are_at_least_128_bits():
    server, parties, _ = make_round(3)
    assert len(server.session) == 16
    answers = {p: parties[p].handle(r) for p, r in server.requests().items()}
    for p, answer in answers.items():
        assert len(answer["c_pk"]) == len(answer["s_pk"]) == 32
        assert len(parties[p]._b) == 32
        assert answer["b_commit"] == hashlib.sha256(parties[p]._b).digest()
    assert len({parties[p]._b for p in parties}) == 3
    assert len({a["s_pk"] for a in answers.values()} | {a["c_pk"] for a in answers.values()}) == 6
    assert len(mask_seed(bytes(32), server.session)) == 32
    with pytest.raises(ValueError):
        prg(bytes(8), 4)  # no short AES keys


def test_prg_is_aes_ctr_keystream_little_endian():
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(40))
    expected = [int.from_bytes(stream[i : i + 4], "little") for i in range(0, 40, 4)]
    assert prg(key, 10).tolist() == expected


def test_party_refuses_wrong_session_stage_and_replays():
    server, parties, _ = make_round(4)
    request = server.requests()["p00"]
    with pytest.raises(SecAggError, match="expected a 'advertise' request"):
        parties["p00"].handle({**request, "stage": "share"})
    with pytest.raises(SecAggError, match="session must be 16 bytes"):
        parties["p00"].handle({**request, "session": b"short"})
    run_stage(server, parties)
    request = server.requests()["p00"]
    with pytest.raises(SecAggError, match="another session"):
        parties["p00"].handle({**request, "session": bytes(16)})
    with pytest.raises(SecAggError, match="own neighbour"):
        own = dict(request["neighbours"], p00=request["neighbours"]["p01"])
        parties["p00"].handle({**request, "neighbours": own})
    with pytest.raises(SecAggError, match="threshold must be"):
        parties["p00"].handle({**request, "threshold": 1})  # not a majority of 3
    with pytest.raises(SecAggError, match="unexpected fields"):
        parties["p00"].handle({**request, "extra": 1})
    parties["p00"].handle(request)
    with pytest.raises(SecAggError, match="expected a 'mask' request"):
        parties["p00"].handle(request)  # replay


def _mask_requests(n=4):
    server, parties, vectors = make_round(n)
    run_stage(server, parties)
    run_stage(server, parties)
    return server, parties, vectors


def test_party_refuses_a_flipped_ciphertext_byte():
    server, parties, _ = _mask_requests()
    request = server.requests()["p00"]
    data = bytearray(request["shares"]["p02"])
    data[20] ^= 1
    forged = {**request, "shares": {**request["shares"], "p02": bytes(data)}}
    with pytest.raises(SecAggError, match="from 'p02' do not authenticate"):
        parties["p00"].handle(forged)
    assert parties["p00"].stage == "mask"  # refused, nothing changed
    assert parties["p00"].handle(request)["masked"].shape == (64,)


def test_party_refuses_shares_relabelled_as_another_sender():
    server, parties, _ = _mask_requests()
    request = server.requests()["p00"]
    shares = request["shares"]
    swapped = {**shares, "p01": shares["p02"], "p02": shares["p01"]}
    with pytest.raises(SecAggError, match="do not authenticate"):
        parties["p00"].handle({**request, "shares": swapped})
    # shares addressed to another party do not open either
    other = server.requests()["p03"]["shares"]
    with pytest.raises(SecAggError, match="do not authenticate"):
        parties["p00"].handle({**request, "shares": {**shares, "p01": other["p01"]}})
    with pytest.raises(SecAggError, match="not among the participants"):
        parties["p00"].handle({**request, "participants": ["p01", "p02", "p03"]})


def test_server_refuses_and_drops_bad_answers():
    server, parties, _ = make_round(6)
    answers = {p: parties[p].handle(r) for p, r in server.requests().items()}
    with pytest.raises(SecAggError, match="'mallory': was not asked"):
        server.receive("mallory", answers["p00"])
    server.receive("p00", answers["p00"])
    with pytest.raises(SecAggError, match="second advertise answer"):
        server.receive("p00", answers["p00"])
    with pytest.raises(SecAggError, match="reuses a public key"):
        server.receive("p01", {**answers["p01"], "s_pk": answers["p00"]["s_pk"]})
    with pytest.raises(SecAggError, match="already dropped"):
        server.receive("p01", answers["p01"])
    with pytest.raises(SecAggError, match="another session"):
        server.receive("p02", {**answers["p02"], "session": bytes(16)})
    with pytest.raises(SecAggError, match="c_pk must be 32 bytes"):
        server.receive("p03", {**answers["p03"], "c_pk": b"x" * 31})
    for p in ("p04", "p05"):
        server.receive(p, answers[p])
    server.advance()
    assert set(server.dropped) == {"p01", "p02", "p03"}
    assert "reuses a public key" in server.dropped["p01"]
    assert set(server.requests()) == {"p00", "p04", "p05"}


@pytest.mark.parametrize(
    "bad",
    [
        lambda m: m.astype(np.int64),
        lambda m: m[:-1],
        lambda m: m.reshape(8, 8),
        lambda m: m.tolist(),
    ],
)
def test_server_refuses_bad_masked_vectors(bad):
    server, parties, vectors = _mask_requests(5)
    requests = server.requests()
    response = parties["p00"].handle(requests["p00"])
    with pytest.raises(SecAggError, match="uint32 array of shape"):
        server.receive("p00", {**response, "masked": bad(response["masked"])})
    for p in ("p01", "p02", "p03", "p04"):
        server.receive(p, parties[p].handle(requests[p]))
    server.advance()
    run_stage(server, parties)
    alive = ["p01", "p02", "p03", "p04"]
    np.testing.assert_array_equal(server.result(), plain_sum(vectors, alive))


def test_server_refuses_share_answers_of_wrong_size_or_recipients():
    server, parties, _ = make_round(4)
    run_stage(server, parties)
    requests = server.requests()
    good = parties["p00"].handle(requests["p00"])
    with pytest.raises(SecAggError, match="shares for"):
        server.receive("p00", {**good, "shares": {"p01": good["shares"]["p01"]}})
    good1 = parties["p01"].handle(requests["p01"])
    with pytest.raises(SecAggError, match="must be 164 bytes"):
        server.receive("p01", {**good1, "shares": {**good1["shares"], "p02": b"\0" * 163}})


def _lie(liar, owner, kind):
    def tamper(pid, response):
        if pid == liar and response["stage"] == "unmask":
            shares = dict(response[f"{kind}_shares"])
            data = bytearray(shares[owner])
            data[-1] ^= 1
            shares[owner] = bytes(data)
            response = {**response, f"{kind}_shares": shares}
        return response

    return tamper


@pytest.mark.parametrize(
    ("owner", "kind", "drop"), [("p03", "b", {}), ("p03", "s", {"p03": "mask"})]
)
def test_a_party_lying_about_a_share_is_named_and_the_sum_stays_exact(owner, kind, drop):
    server, parties, vectors = make_round(7)  # complete graph, k = 6, t = 4: 2 spare shares
    total = run_round(server, parties, drop, tamper=_lie("p05", owner, kind))
    assert set(server.flagged) == {"p05"}
    assert owner in server.flagged["p05"]
    np.testing.assert_array_equal(total, plain_sum(vectors, server.survivors))


def test_a_lie_without_spare_shares_aborts():
    server, parties, _ = make_round(5)  # k = 4, t = 3; one party silent at unmask: 3 shares
    with pytest.raises(SecAggError, match="cannot recover the b secret of 'p03'"):
        run_round(server, parties, {"p00": "unmask"}, tamper=_lie("p01", "p03", "b"))
    assert server.stage == "aborted"


def test_a_wrong_share_index_is_named():
    def tamper(pid, response):
        if pid == "p02" and response["stage"] == "unmask":
            shares = dict(response["b_shares"])
            shares["p00"] = (99).to_bytes(4, "big") + shares["p00"][4:]
            response = {**response, "b_shares": shares}
        return response

    server, parties, vectors = make_round(7)
    total = run_round(server, parties, tamper=tamper)
    assert "index 99" in server.flagged["p02"]
    np.testing.assert_array_equal(total, plain_sum(vectors, vectors))


def _binomial_cdf_below(k, p, t):
    """Exact ``P[Binomial(k, p) < t]`` in rationals."""
    p = Fraction(p)
    return sum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(t))


def _feasible(n, k, t, d, c, sec=40, cor=20):
    return n * _binomial_cdf_below(k, 1 - Fraction(d), t) <= Fraction(1, 2**cor) and n * (
        1 - _binomial_cdf_below(k, Fraction(c), t)
    ) <= Fraction(1, 2**sec)


@pytest.mark.parametrize(
    ("n", "d", "c", "expected"),
    [(100, 0.1, 0.0, (34, 18)), (1000, 0.1, 0.0, (38, 20)), (40, 0.01, 0.0, (12, 7))],
)
def test_choose_degree_against_exact_tails(n, d, c, expected):
    k, t = choose_degree(n, d, c)
    assert (k, t) == expected
    assert _feasible(n, k, t, Fraction(d), Fraction(c))
    assert not any(_feasible(n, k - 2, s, Fraction(d), Fraction(c)) for s in range(k // 2, k - 1))


def test_choose_degree_by_hand():
    # n = 8, 0.1% dropout: k = 6, t = 4: 8 * P[Bin(6, 0.999) < 4] = 8 * (20 * 1e-9 * 0.999^3
    # + ...) = 1.6e-7 <= 2**-20 = 9.5e-7; k = 4, t = 3: 8 * 6 * 1e-6 = 4.8e-5 is too much.
    assert choose_degree(8, 0.001, 0.0) == (6, 4)
    # few parties: nothing smaller works, the complete graph (classic SecAgg)
    assert choose_degree(3, 0.1, 0.0) == (2, 2)
    assert choose_degree(10, 0.1, 0.0) == (9, 5)
    # 5% corrupt among 100: t = 18 of k = 34 has 100 * P[Bin(34, 0.05) >= 18] < 2**-40
    assert choose_degree(100, 0.1, 0.05) == (34, 18)


def test_choose_degree_refuses():
    with pytest.raises(ValueError, match="n=20 parties secure with corruption_rate=0.333"):
        choose_degree(20, 0.1, 1 / 3)
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        choose_degree(50, 1.0, 0.0)
    with pytest.raises(ValueError, match="n must be"):
        choose_degree(1, 0.1, 0.0)
    with pytest.raises(ValueError, match="security_bits"):
        choose_degree(10, 0.1, 0.0, security_bits=0)


def test_harary_graph():
    ids = [f"p{i}" for i in range(10)]
    graph = harary_graph(ids, 4, b"seed")
    assert all(len(graph[p]) == 4 and p not in graph[p] for p in ids)
    assert all(p in graph[q] for p in ids for q in graph[p])
    assert graph == harary_graph(list(reversed(ids)), 4, b"seed")
    assert graph != harary_graph(ids, 4, b"other seed")
    assert harary_graph(ids, 9, b"seed") == {p: [q for q in ids if q != p] for p in ids}
    with pytest.raises(ValueError, match="even"):
        harary_graph(ids, 3, b"seed")


def test_shamir():
    rng = random.Random(1)
    secret = bytes(range(32))
    shares = shamir_split(secret, 3, 5, rng)
    assert [x for x, _ in shares] == [1, 2, 3, 4, 5]
    assert all(0 <= y < PRIME for _, y in shares)
    assert shamir_combine(shares[:3]) == shamir_combine(shares[2:]) == secret
    assert shamir_combine(shares) == secret
    with pytest.raises(ValueError):
        shamir_combine(shares[:2])  # two points: a line through them, almost surely not it
    with pytest.raises(ValueError, match="distinct"):
        shamir_combine([shares[0], shares[0]])
    with pytest.raises(ValueError, match="t <= n"):
        shamir_split(secret, 6, 5)


def test_reconstruct_names_bad_shares_or_aborts():
    secret = b"s" * 32
    commit = hashlib.sha256(secret).digest()

    def verify(candidate):
        return hashlib.sha256(candidate).digest() == commit

    shares = dict(zip("abcdef", shamir_split(secret, 3, 6), strict=True))
    assert reconstruct(shares, 3, verify) == (secret, [])
    shares["a"] = (1, (shares["a"][1] + 1) % PRIME)
    shares["d"] = (4, 7)
    assert reconstruct(shares, 3, verify) == (secret, ["a", "d"])
    with pytest.raises(SecAggError, match="no 3 of the 3 shares"):
        reconstruct({h: shares[h] for h in "abc"}, 3, verify)


def test_quantizer_round_trip_and_error_bound():
    q = Quantizer(clip_range=2.0, max_summands=100)
    assert q.step == 2.0 / ((2**31 - 1) // 100)
    assert math.isclose(q.step, 2 * 2.0 * 100 / 2**32, rel_tol=1e-6)
    rng = np.random.default_rng(0)
    xs = rng.uniform(-3, 3, size=(100, 1000))
    encoded = [q.encode(x) for x in xs]
    assert all(e.dtype == np.uint32 for e in encoded)
    total = np.zeros(1000, dtype=np.uint32)
    for e in encoded:
        total += e
    decoded = q.decode(total)
    exact = np.clip(xs, -2, 2).sum(axis=0)
    assert np.max(np.abs(decoded - exact)) <= q.max_error(100)
    # the extremes: max_summands times +clip_range and -clip_range fit in int32
    top = q.encode(np.full(100, 2.0))
    np.testing.assert_allclose(q.decode(sum(top, np.zeros(1, np.uint32))), 200.0, atol=1e-6)
    bottom = sum(q.encode(np.full(100, -2.0)), np.zeros(1, np.uint32))
    np.testing.assert_allclose(q.decode(bottom), -200.0, atol=1e-6)
    np.testing.assert_array_equal(q.decode(q.encode(np.array([0.0, -1e-9]))), [0.0, 0.0])
    assert q.max_error(10) == 10 * q.step / 2


def test_quantizer_validates():
    with pytest.raises(ValueError, match="clip_range"):
        Quantizer(0.0, 10).encode(np.zeros(3))
    with pytest.raises(ValueError, match="max_summands"):
        Quantizer(1.0, 0).encode(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        Quantizer(1.0, 10).encode(np.array([np.nan]))
    with pytest.raises(ValueError, match="uint32"):
        Quantizer(1.0, 10).decode(np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match="count"):
        Quantizer(1.0, 10).max_error(11)


def test_pack_round_trip():
    message = {"stage": "share", "session": b"\0" * 16, "shares": {"a": b"xyz"}, "t": 3}
    assert unpack(pack(message)) == message
    assert b"$b" in pack(message)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"[1, 2]", "JSON object"),
        (b"not json", "not a JSON"),
        (b'{"a": {"$x": "AAAA"}}', "unknown tag"),
        (b'{"a": {"$b": "AAAA", "c": 1}}', "unknown tag"),
        (b'{"a": {"$b": "!!"}}', "bad base64"),
        (b'{"a": 1.5}', "no floats"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": ' + b"[" * 10 + b"]" * 10 + b"}", "nested deeper"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not a JSON"),
        (b"\xff\xfe", "not a JSON"),
    ],
)
def test_unpack_refuses(data, match):
    with pytest.raises(SecAggError, match=match):
        unpack(data)


def test_unpack_and_pack_refuse_more():
    with pytest.raises(SecAggError, match="max_bytes=10"):
        unpack(b'{"a": "0123456789"}', max_bytes=10)
    with pytest.raises(SecAggError, match="arrays travel separately"):
        pack({"masked": np.zeros(3, dtype=np.uint32)})
    with pytest.raises(SecAggError, match="keys must be strings"):
        pack({"$b": "sneaky"})
    with pytest.raises(SecAggError, match="a message is a dict"):
        pack([1])


def test_wire_share_size():
    assert WIRE_SHARE_BYTES == 70


def test_consistency_check_with_any_share_indices():
    from fedfuse.secure._shamir import _evaluate, _on_one_polynomial

    base = shamir_split(b"k" * 32, 3, 3)
    points = [(x, _evaluate(base, x)) for x in (5, 1000, 10**6, 7, 2)]
    assert _on_one_polynomial(points, 3)
    assert not _on_one_polynomial([*points[:4], (2, points[4][1] + 1)], 3)
    gapped = [(x, _evaluate(base, x)) for x in (1, 2, 4, 7, 8)]  # holders 3, 5, 6 missing
    assert _on_one_polynomial(gapped, 3)
    assert not _on_one_polynomial(gapped, 2)


def test_server_validates_its_parameters():
    with pytest.raises(ValueError, match="distinct strings"):
        SecAggServer(["a", "a"], 10)
    with pytest.raises(ValueError, match="vector_size"):
        SecAggServer(["a", "b"], 0)
    with pytest.raises(ValueError, match="min_parties"):
        SecAggServer(["a", "b"], 10, min_parties=1)
    with pytest.raises(ValueError, match="dropout_rate"):
        SecAggServer(["a", "b"], 10, dropout_rate=1.5)
    with pytest.raises(ValueError, match="corruption_rate"):
        SecAggServer([f"p{i}" for i in range(20)], 10, corruption_rate=0.4)
