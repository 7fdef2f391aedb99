"""Text for doc2vec: the ``20_newsgroup`` and ``wikipedia`` data handlers and the Lee corpus.

A party's ``.npz`` holds its own documents as string arrays (``x_train``, ``x_test``; numpy
unicode arrays load without pickle) with ``y_train``/``y_test`` one entry per document (a
newsgroup id, or anything for Wikipedia articles). Nothing here downloads: the handlers only
clean and tokenize what the party uploaded, with gensim's ``simple_preprocess`` (lower case,
alphabetic tokens of 2 to 15 characters).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedfuse._extras import import_extra
from fedfuse.data._dataset import ArrayDataset, PartyData
from fedfuse.data._handlers import register_data_handler
from fedfuse.data._loaders import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "load_lee_corpus",
    "load_lee_similarity",
    "newsgroup_text",
    "tokenize",
    "wikipedia_text",
]

_HEADER_LINE = re.compile(r"^[A-Za-z][\w-]*: ")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LINK = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]")
_TAG = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<[^>]+>", re.DOTALL)


def tokenize(text: str) -> list[str]:
    """gensim's ``simple_preprocess``: lower-cased alphabetic tokens."""
    utils = import_extra("gensim.utils", "doc2vec", "doc2vec text handling")
    return utils.simple_preprocess(text)


def _strip_newsgroup(text: str) -> str:
    """Drop the e-mail header block, quoted lines (``>``) and the signature (after ``--``)."""
    lines = text.splitlines()
    if lines and _HEADER_LINE.match(lines[0]):
        blank = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
        lines = lines[blank + 1 :]
    body = []
    for line in lines:
        if line.strip() in ("--", "-- "):
            break
        if not line.lstrip().startswith(("|", ">")):
            body.append(line)
    return "\n".join(body)


def _strip_wiki(text: str) -> str:
    """Drop templates ``{{...}}`` and tags/references; keep the text of ``[[target|text]]``."""
    previous = None
    while previous != text:  # templates nest
        previous, text = text, _TEMPLATE.sub(" ", text)
    return _LINK.sub(r"\1", _TAG.sub(" ", text))


def _documents(data: ArrayDataset, clean, name: str) -> ArrayDataset:
    x = np.asarray(data.x)
    if x.ndim != 1 or x.dtype.kind not in "US":
        raise DatasetFormatError(
            f"{name}: x must be a 1-D array of document strings, got dtype {x.dtype} "
            f"and shape {x.shape}"
        )
    tokens = np.empty(len(x), dtype=object)
    tokens[:] = [tokenize(clean(str(doc))) for doc in x]
    y = np.asarray(data.y)
    y = y.astype(np.int64) if y.dtype.kind in "iub" else np.arange(len(y), dtype=np.int64)
    return ArrayDataset(tokens, y)


def newsgroup_text(party: PartyData) -> PartyData:
    """Newsgroup posts -> token lists, without headers, quotes and signatures; y kept if integer."""
    test = party.test and _documents(party.test, _strip_newsgroup, "20_newsgroup")
    return PartyData(_documents(party.train, _strip_newsgroup, "20_newsgroup"), test)


def wikipedia_text(party: PartyData) -> PartyData:
    """Wikipedia articles -> token lists, without markup; non-integer y becomes the row index."""
    test = party.test and _documents(party.test, _strip_wiki, "wikipedia")
    return PartyData(_documents(party.train, _strip_wiki, "wikipedia"), test)


def _gensim_test_file(name: str) -> Path:
    test_utils = import_extra("gensim.test.utils", "doc2vec", "the Lee corpus")
    path = Path(test_utils.datapath(name))
    if not path.is_file():
        raise DatasetNotFoundError(f"{name} not found at {path}: reinstall gensim")
    return path


def _lines(path: Path) -> np.ndarray:
    text = path.read_text(encoding="latin-1")  # the files are ASCII but for a few pound signs
    return np.array([line for line in text.splitlines() if line.strip()])


def load_lee_corpus(path: str | Path | None = None) -> np.ndarray:
    """The Lee background corpus (300 news articles) bundled with gensim, one string each.

    ``path`` overrides the file (one document per line).
    """
    return _lines(Path(path) if path is not None else _gensim_test_file("lee_background.cor"))


def load_lee_similarity() -> tuple[np.ndarray, np.ndarray]:
    """The Lee evaluation set bundled with gensim: 50 news articles and a ``(50, 50)`` matrix of
    human similarity judgements in [0, 1] (upper triangle), as ``(documents, similarity)``.

    References:
        Lee, Pincombe and Welsh, "An Empirical Evaluation of Models of Text Document
        Similarity", CogSci 2005.
    """
    documents = _lines(_gensim_test_file("lee.cor"))
    similarity = np.loadtxt(_gensim_test_file("similarities0-1.txt"))
    return documents, similarity


register_data_handler("20_newsgroup", newsgroup_text)
register_data_handler("wikipedia", wikipedia_text)
