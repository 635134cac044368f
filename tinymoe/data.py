"""The lessons' data, made on this machine: nothing is downloaded at run time.

- **Vowels.** Peterson & Barney (1952), "Control methods used in a study of the vowels",
  JASA 24:175-184: F0-F3 of ten American English vowels, said twice in /h_d/ words
  ("heed", "hid", ...) by 76 speakers. :func:`load_peterson_barney` gives all 1520 rows;
  :func:`jacobs_1991_vowels` the four-vowel task of Jacobs, Jordan, Nowlan & Hinton (1991),
  "Adaptive mixtures of local experts", Neural Computation 3:79-87.
- **Synthetic text.** :func:`multi_domain_corpus`: arithmetic, brackets, English-like words
  and DNA-like strings interleaved, every character labelled with its domain, so that one
  can measure whether experts specialise by domain.
- **Real text.** :func:`stdlib_corpus`: the Python standard library's own sources.
- **Shared tools.** :class:`CharVocab` (characters <-> ids), :func:`random_windows` and
  :func:`sequential_windows` (language-modelling batches), :func:`train_val_split`, and
  :func:`load_corpus`, which gives either corpus encoded and split (:class:`TextCorpus`).
"""

from __future__ import annotations

import csv
import os
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinymoe import backend

# ----------------------------------------------------------------------------- vowels
PB_CSV = Path(__file__).resolve().parent.parent / "data" / "peterson_barney_1952.csv"
PB_COLUMNS = ("Type", "Sex", "Speaker", "Vowel", "IPA", "F0", "F1", "F2", "F3")
PB_NUMERIC = ("Speaker", "F0", "F1", "F2", "F3")  # integers (Hz, or the speaker's number)

# Praat spells IPA in backslash codes (its kar/longchar.cpp); these are the ten vowels of
# the table. Praat writes the vowel of "heard" as \er\hr (open-mid central vowel + rhotic
# hook, ɜ˞); IPA's single letter for it is ɝ, as in the published table.
PRAAT_IPA = {
    "i": "i", r"\ic": "ɪ", r"\ef": "ɛ", r"\ae": "æ", r"\as": "ɑ",
    r"\ct": "ɔ", r"\hs": "ʊ", "u": "u", r"\vt": "ʌ", r"\er\hr": "ɝ",
}  # fmt: skip


def _rows_from_praat() -> list[dict]:
    """The table as Praat builds it, one dict per row, IPA turned into Unicode."""
    try:
        from parselmouth.praat import call
    except ImportError as error:
        raise ModuleNotFoundError(
            f"{PB_CSV} is missing and building it needs Praat: "
            "pip install praat-parselmouth==0.4.7 (it is in requirements.txt)"
        ) from error
    table = call("Create formant table (Peterson & Barney 1952)")
    labels = tuple(call(table, "Get column label", j) for j in range(1, call(table, "Get number of columns") + 1))
    if labels != PB_COLUMNS:
        raise RuntimeError(f"Praat's table has columns {labels}, expected {PB_COLUMNS}")
    rows = []
    for i in range(1, call(table, "Get number of rows") + 1):
        row = {label: call(table, "Get value", i, label) for label in labels}  # every value comes as a string
        row["IPA"] = PRAAT_IPA[row["IPA"]]
        rows.append(row)
    return rows


def load_peterson_barney(path=PB_CSV) -> dict[str, np.ndarray]:
    """The 1520 rows of Peterson & Barney (1952) as columns: ``{"F1": int array, ...}``.

    The data ship inside Praat (PyPI package ``praat-parselmouth``), as the command
    "Create formant table (Peterson & Barney 1952)": 33 men (Type "m", speakers 1-33),
    28 women ("w", 34-61) and 15 children ("c", 62-76; Sex "m" or "f"); each said ten
    vowels twice, so every speaker has 20 consecutive rows. ``Vowel`` is Praat's ASCII code
    (iy ih eh ae ah aa ao uh uw er: heed hid head had hud hod hawed hood who'd heard),
    ``IPA`` the article's symbol, ``F0``-``F3`` are in Hz. In five rows of back vowels F1
    equals F2 (speakers 2, 72, 74). The original data file stars the utterances that not
    all listeners identified as intended; Praat's table drops the star, so all 1520 rows
    are here.

    The first call writes the table to ``path`` (the repository's ``data/`` folder, where
    it is committed); later calls, and machines without parselmouth, read that CSV.
    """
    path = Path(path)
    if not path.exists():
        rows = _rows_from_praat()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=PB_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)  # atomic: a crash never leaves half a CSV that later calls would trust
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {
        name: np.array([row[name] for row in rows], dtype=np.int64 if name in PB_NUMERIC else str)
        for name in PB_COLUMNS
    }


# The four vowels of Jacobs et al. (1991), as Praat's codes: [i] heed, [ɪ] hid, [ɑ] hod, [ʌ] hud.
JACOBS_VOWELS = ("iy", "ih", "aa", "ah")
# Their 50 training and 25 test speakers, two to one within each speaker type (see below).
JACOBS_TRAIN_SPEAKERS = (*range(1, 23), *range(34, 52), *range(62, 72))  # 22 men, 18 women, 10 children
JACOBS_TEST_SPEAKERS = (*range(23, 34), *range(52, 61), *range(72, 77))  # 11 men, 9 women, 5 children


def jacobs_1991_vowels(path=PB_CSV):
    """The vowel task of Jacobs, Jordan, Nowlan & Hinton (1991), section 4.

    Inputs are (F1, F2) in kHz (float32, shape (n, 2)); labels are 0-3 for the vowels
    [i] [ɪ] [ɑ] [ʌ] (Praat's iy, ih, aa, ah). Returns ``(x_train, y_train, x_test, y_test,
    classes)`` with ``classes`` the four IPA symbols; rows keep the table's order.

    The paper trains on 50 speakers and tests on 25; we do not have its list, and the table
    has 76, so we choose, deterministically: within each type, in speaker-number order, the
    first two thirds train and the last third tests, so both sets hold men, women and
    children in the same proportions. Men 1-22 train, 23-33 test; children 62-71 train,
    72-76 test; the 28 women do not split two to one, so women 34-51 train, 52-60 test and
    woman 61 (the last) is left out. Every speaker gives 8 rows (4 vowels, twice): 400
    training and 200 test rows.
    """
    pb = load_peterson_barney(path)
    x = np.stack([pb["F1"], pb["F2"]], axis=1).astype(np.float32) / 1000  # Hz -> kHz
    wanted = np.isin(pb["Vowel"], JACOBS_VOWELS)
    y = np.array([JACOBS_VOWELS.index(v) if v in JACOBS_VOWELS else -1 for v in pb["Vowel"]])
    train = wanted & np.isin(pb["Speaker"], JACOBS_TRAIN_SPEAKERS)
    test = wanted & np.isin(pb["Speaker"], JACOBS_TEST_SPEAKERS)
    classes = tuple(str(pb["IPA"][pb["Vowel"] == code][0]) for code in JACOBS_VOWELS)
    return x[train], y[train], x[test], y[test], classes


# ----------------------------------------------------------------------------- synthetic text
DOMAINS = ("arithmetic", "brackets", "english", "dna")
CONSONANTS, VOWEL_LETTERS = "bdfgklmnprstvz", "aeiou"
BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}
# Every domain has its own characters, so a character's domain is never ambiguous.
ALPHABETS = {
    "arithmetic": "0123456789+-*=;",
    "brackets": "".join(BRACKETS) + "".join(BRACKETS.values()),
    "english": CONSONANTS + VOWEL_LETTERS + " .",
    "dna": "ACGT",
}
MAX_DEPTH = 6  # deepest bracket nesting
DNA_MOTIFS = ("TATAAA", "GAATTC", "CACGTG", "GGATCC")  # TATA box, EcoRI site, E-box, BamHI site


def _make_lexicon(n_words: int = 64) -> tuple[str, ...]:
    """Words of one to three consonant-vowel syllables, sometimes closed by a consonant ("ru",
    "pigeba", "sonizet"). Drawn once from seed 0, whatever the corpus seed: every corpus seed writes new
    text in the same language."""
    rng = np.random.default_rng(0)
    words = []
    for _ in range(n_words):
        syllables = [
            CONSONANTS[rng.integers(len(CONSONANTS))] + VOWEL_LETTERS[rng.integers(len(VOWEL_LETTERS))]
            for _ in range(rng.integers(1, 4))
        ]
        coda = CONSONANTS[rng.integers(len(CONSONANTS))] if rng.random() < 0.3 else ""
        words.append("".join(syllables) + coda)
    return tuple(words)


LEXICON = _make_lexicon()
ZIPF = 1 / np.arange(1, len(LEXICON) + 1)  # Zipf's law: the k-th word is used in proportion to 1/k
ZIPF /= ZIPF.sum()


def _arithmetic(rng) -> str:
    """One to six true equations: "12+7=19;", "40-13=27;" (never negative), "6*7=42;"."""
    equations = []
    for _ in range(rng.integers(1, 7)):
        op = "+-*"[rng.integers(3)]
        a, b = (int(v) for v in rng.integers(0, 13 if op == "*" else 100, size=2))
        if op == "-":
            a, b = max(a, b), min(a, b)
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        equations.append(f"{a}{op}{b}={result};")
    return "".join(equations)


def _brackets(rng) -> str:
    """One balanced word of the Dyck language on four bracket pairs: 2-48 characters, each
    closer matching the latest unclosed opener, nesting at most MAX_DEPTH deep."""
    out, stack = [], []
    for remaining in range(2 * int(rng.integers(1, 25)), 0, -1):
        # Every step moves the depth and `remaining` by one, so they keep the same parity:
        # depth == remaining means that all the rest must close; a smaller depth leaves room
        # to open. An empty stack must open; a full one (MAX_DEPTH) must close.
        if stack and (len(stack) in (remaining, MAX_DEPTH) or rng.random() < 0.5):
            out.append(BRACKETS[stack.pop()])
        else:
            stack.append("([{<"[rng.integers(4)])
            out.append(stack[-1])
    return "".join(out)


def _english(rng) -> str:
    """A sentence of 3-8 LEXICON words, common words more often (Zipf), ending in ". "."""
    words = rng.choice(len(LEXICON), size=rng.integers(3, 9), p=ZIPF)
    return " ".join(LEXICON[w] for w in words) + ". "


def _dna(rng) -> str:
    """20-40 random bases with zero to two of DNA_MOTIFS written over them at random places."""
    bases = ["ACGT"[i] for i in rng.integers(4, size=rng.integers(20, 41))]
    for _ in range(rng.integers(3)):
        motif = DNA_MOTIFS[rng.integers(len(DNA_MOTIFS))]
        start = int(rng.integers(len(bases) - len(motif) + 1))
        bases[start : start + len(motif)] = motif
    return "".join(bases)


GENERATORS = (_arithmetic, _brackets, _english, _dna)  # in the order of DOMAINS


def multi_domain_corpus(n_chars: int, seed: int = 0):
    """``(text, domains, DOMAINS)``: ``n_chars`` characters of segments from four "domains",
    each segment's domain drawn uniformly, and ``domains[i]`` the index in ``DOMAINS`` of
    the domain that wrote ``text[i]``.

    - arithmetic: true equations such as "12+7=19;" (digits and + - * = ;)
    - brackets: balanced words of a Dyck language, e.g. "([]<{}>)" (four bracket pairs)
    - english: sentences of invented words built from consonant-vowel syllables, e.g.
      "pigeba ru sonizet. " (lower-case letters, space, full stop)
    - dna: random A, C, G, T with recurring motifs such as "TATAAA"

    The alphabets are disjoint (``ALPHABETS``), and segments follow each other with no
    separator: a model has to notice a switch from the characters themselves. Segment
    lengths are set so that each domain writes 21-28% of the characters. The text is
    cut at ``n_chars``, so the last segment may be unfinished. The same seed (and NumPy
    version) gives the same text; a different seed gives different text.
    """
    rng = np.random.default_rng(seed)
    segments, labels, length = [], [], 0
    while length < n_chars:
        domain = int(rng.integers(len(DOMAINS)))
        segments.append(GENERATORS[domain](rng))
        labels.append(domain)
        length += len(segments[-1])
    domains = np.repeat(np.array(labels, dtype=np.int64), [len(s) for s in segments])
    return "".join(segments)[:n_chars], domains[:n_chars], DOMAINS


# ----------------------------------------------------------------------------- real text
def stdlib_files() -> list[Path]:
    """The standard library's public top-level modules (``Lib/*.py`` whose names do not
    start with "_"), sorted by name: a fixed list for a given Python version."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(path for path in root.glob("*.py") if not path.name.startswith("_"))


def stdlib_corpus(n_chars: int = 1_000_000) -> str:
    """The first ``n_chars`` characters of :func:`stdlib_files`, read in order and joined.

    Real text that every machine with Python already has (on 3.11 it starts with abc.py,
    aifc.py, antigravity.py, argparse.py...). Deterministic for one Python version;
    another version has other files and other code, so its text differs.
    """
    pieces, length = [], 0
    for path in stdlib_files():
        with tokenize.open(path) as f:  # reads the encoding a Python file declares (UTF-8 by default)
            pieces.append(f.read())
        length += len(pieces[-1])
        if length >= n_chars:
            break
    return "".join(pieces)[:n_chars]


# ----------------------------------------------------------------------------- tools
class CharVocab:
    """Characters <-> integer ids; id ``i`` is the ``i``-th character in sorted order, so
    the same text always gives the same ids. Build it from every text a model will see
    (``CharVocab(text_a + text_b)`` shares one vocabulary between corpora)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {char: i for i, char in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The ids of ``text`` as an int64 array; a KeyError names a character not in the vocabulary."""
        try:
            return np.array([self.index[char] for char in text], dtype=np.int64)
        except KeyError as error:
            raise KeyError(f"character {error.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        """The text of a 1-d sequence of ids."""
        return "".join(self.chars[i] for i in np.asarray(ids).tolist())


def random_windows(ids, batch_size: int, context: int, rng=None):
    """``(inputs, targets)``, each ``(batch_size, context)``: windows of ``ids`` at random
    starts, and the same windows one step later (``targets[:, t] == inputs[:, t + 1]``),
    so every position learns to predict the next token.

    ``rng`` is a NumPy ``Generator``; by default tinymoe's own, seeded by ``tm.manual_seed``.
    """
    ids = np.asarray(ids)
    if len(ids) < context + 1:
        raise ValueError(f"need at least context + 1 = {context + 1} ids, got {len(ids)}")
    rng = backend.rng("cpu") if rng is None else rng
    starts = rng.integers(0, len(ids) - context, size=batch_size)  # the last start leaves room for the target
    window = ids[starts[:, None] + np.arange(context + 1)]
    return window[:, :-1], window[:, 1:]


def sequential_windows(ids, context: int):
    """``(inputs, targets)``: ``ids`` cut into consecutive, non-overlapping windows of
    ``context`` (the remainder dropped), for an evaluation that sees every token once.

    ``inputs`` is ``ids[:n * context].reshape(n, context)``, so any per-token label (such as
    the domains of :func:`multi_domain_corpus`) lines up by the same slice and reshape.
    """
    ids = np.asarray(ids)
    n = (len(ids) - 1) // context  # the last target must exist
    if n == 0:
        raise ValueError(f"need at least context + 1 = {context + 1} ids, got {len(ids)}")
    return ids[: n * context].reshape(n, context), ids[1 : n * context + 1].reshape(n, context)


def train_val_split(sequence, val_fraction: float = 0.1):
    """``(train, validation)``: the first ``1 - val_fraction`` of a text or array, then the rest.

    A contiguous cut rather than a random one: language-model windows overlap, so windows
    drawn at random from one pool would put the same characters in both sets. Only the
    windows that straddle the cut are lost.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(round(len(sequence) * (1 - val_fraction)))
    return sequence[:cut], sequence[cut:]


# ---------------------------------------------------------------------- a corpus, ready
CORPORA = ("multi_domain", "stdlib")


@dataclass
class TextCorpus:
    """A character corpus encoded and split for language modelling.

    ``val_domains`` labels every validation character with its domain (multi-domain
    corpus only; None for real text), for expert-by-domain tables."""

    name: str
    vocab: CharVocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    val_domains: np.ndarray | None
    domain_names: tuple

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def load_corpus(name: str, n_chars: int, seed: int = 0, val_fraction: float = 0.1) -> TextCorpus:
    """``name`` in CORPORA, cut to ``n_chars`` characters, split by :func:`train_val_split`."""
    if name == "multi_domain":
        text, domains, names = multi_domain_corpus(n_chars, seed)
    elif name == "stdlib":
        text, domains, names = stdlib_corpus(n_chars), None, ()
    else:
        raise ValueError(f"unknown corpus {name!r}; valid names: {', '.join(CORPORA)}")
    vocab = CharVocab(text)
    train_ids, val_ids = train_val_split(vocab.encode(text), val_fraction)
    val_domains = train_val_split(domains, val_fraction)[1] if domains is not None else None
    return TextCorpus(name, vocab, train_ids, val_ids, val_domains, names)
