"""tinymoe.data: the vowel table against the published means, the Jacobs et al. split, the
generated corpora and the language-modelling batches."""

import csv
import io
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import tinymoe as tm
from tinymoe import data

# Peterson & Barney (1952), Table II: mean F0-F3 in Hz; a copy of ../shared/data/peterson_barney_1952_means.csv.
PUBLISHED_MEANS = """\
vowel_ipa,word,group,F0_hz,F1_hz,F2_hz,F3_hz
i,heed,men,136,270,2290,3010
i,heed,women,235,310,2790,3310
i,heed,children,272,370,3200,3730
ɪ,hid,men,135,390,1990,2550
ɪ,hid,women,232,430,2480,3070
ɪ,hid,children,269,530,2730,3600
ɛ,head,men,130,530,1840,2480
ɛ,head,women,223,610,2330,2990
ɛ,head,children,260,690,2610,3570
æ,had,men,127,660,1720,2410
æ,had,women,210,860,2050,2850
æ,had,children,251,1010,2320,3320
ɑ,hod,men,124,730,1090,2440
ɑ,hod,women,212,850,1220,2810
ɑ,hod,children,256,1030,1370,3170
ɔ,hawed,men,129,570,840,2410
ɔ,hawed,women,216,590,920,2710
ɔ,hawed,children,263,680,1060,3180
ʊ,hood,men,137,440,1020,2240
ʊ,hood,women,232,470,1160,2680
ʊ,hood,children,276,560,1410,3310
u,who'd,men,141,300,870,2240
u,who'd,women,231,370,950,2670
u,who'd,children,274,430,1170,3260
ʌ,hud,men,130,640,1190,2390
ʌ,hud,women,221,760,1400,2780
ʌ,hud,children,261,850,1590,3360
ɝ,heard,men,133,490,1350,1690
ɝ,heard,women,218,500,1640,1960
ɝ,heard,children,261,560,1820,2160
"""
SHARED_MEANS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "peterson_barney_1952_means.csv"
GROUP_TYPE = {"men": "m", "women": "w", "children": "c"}


# ----------------------------------------------------------------------------- vowels
def test_table_has_1520_rows_of_76_speakers():
    pb = data.load_peterson_barney()
    assert all(len(column) == 1520 for column in pb.values())
    assert sorted(set(pb["Speaker"].tolist())) == list(range(1, 77))
    assert np.all(np.bincount(pb["Speaker"])[1:] == 20)  # ten vowels, twice each
    speakers_per_type = {t: len(set(pb["Speaker"][pb["Type"] == t].tolist())) for t in "mwc"}
    assert speakers_per_type == {"m": 33, "w": 28, "c": 15}
    assert sorted(set(pb["Vowel"].tolist())) == sorted(["iy", "ih", "eh", "ae", "ah", "aa", "ao", "uh", "uw", "er"])


def test_means_per_type_and_vowel_match_the_published_table():
    """Largest differences seen: F0 4.3 Hz, F1 14 Hz, F2 23 Hz, F3 83 Hz ([ɔ] children);
    relative to the published value at most 1.7% (F0) and 2.7% (F1-F3). Table II rounds
    formants to 10 Hz and the digital data do not reproduce it exactly, so the bounds are
    5 Hz for F0 and 3% for the formants: a swapped vowel, type or column misses by far more."""
    pb = data.load_peterson_barney()
    published = list(csv.DictReader(io.StringIO(PUBLISHED_MEANS)))
    assert len(published) == 30
    for row in published:
        rows = (pb["Type"] == GROUP_TYPE[row["group"]]) & (pb["IPA"] == row["vowel_ipa"])
        assert rows.sum() == {"men": 66, "women": 56, "children": 30}[row["group"]]
        for name in ("F0", "F1", "F2", "F3"):
            mean, expected = pb[name][rows].mean(), float(row[f"{name}_hz"])
            bound = 5.0 if name == "F0" else 0.03 * expected
            assert abs(mean - expected) <= bound, (row["vowel_ipa"], row["group"], name, mean, expected)


@pytest.mark.skipif(not SHARED_MEANS.exists(), reason="the shared reference folder is not on this machine")
def test_published_means_copy_matches_the_shared_reference():
    assert PUBLISHED_MEANS == SHARED_MEANS.read_text(encoding="utf-8")


def test_committed_csv_is_what_praat_gives(tmp_path):
    pytest.importorskip("parselmouth")
    rebuilt = data.load_peterson_barney(tmp_path / "pb.csv")  # no CSV there: built through Praat
    assert (tmp_path / "pb.csv").read_bytes() == data.PB_CSV.read_bytes()
    committed = data.load_peterson_barney()
    for name in data.PB_COLUMNS:
        np.testing.assert_array_equal(rebuilt[name], committed[name])


def test_the_csv_loads_without_parselmouth_and_a_missing_one_says_how_to_build_it(tmp_path, monkeypatch):
    for module in ("parselmouth", "parselmouth.praat"):
        monkeypatch.setitem(sys.modules, module, None)  # makes importing them fail, even if imported before
    assert data.PB_CSV.exists()
    assert len(data.load_peterson_barney()["F1"]) == 1520
    with pytest.raises(ModuleNotFoundError, match="pip install praat-parselmouth"):
        data.load_peterson_barney(tmp_path / "missing.csv")


def test_jacobs_split_has_50_train_and_25_test_speakers_two_to_one_per_type():
    train, test = set(data.JACOBS_TRAIN_SPEAKERS), set(data.JACOBS_TEST_SPEAKERS)
    assert len(data.JACOBS_TRAIN_SPEAKERS) == len(train) == 50
    assert len(data.JACOBS_TEST_SPEAKERS) == len(test) == 25
    assert not train & test
    assert set(range(1, 77)) - train - test == {61}
    pb = data.load_peterson_barney()
    type_of = dict(zip(pb["Speaker"].tolist(), pb["Type"].tolist(), strict=True))
    assert Counter(type_of[s] for s in train) == {"m": 22, "w": 18, "c": 10}
    assert Counter(type_of[s] for s in test) == {"m": 11, "w": 9, "c": 5}


def test_jacobs_task_is_four_vowels_in_khz_taken_from_the_right_rows():
    x_train, y_train, x_test, y_test, classes = data.jacobs_1991_vowels()
    assert classes == ("i", "ɪ", "ɑ", "ʌ")
    assert x_train.shape == (400, 2) and x_test.shape == (200, 2)
    assert np.bincount(y_train).tolist() == [100] * 4 and np.bincount(y_test).tolist() == [50] * 4
    for x in (x_train, x_test):
        assert x.dtype == np.float32
        assert np.all((x > 0.1) & (x < 4.0)) and np.all(x[:, 0] <= x[:, 1])  # F1 <= F2 (equal in one row), kHz

    # The same rows, picked straight from the CSV file.
    with open(data.PB_CSV, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    codes = {"iy": ("i", 0), "ih": ("ɪ", 1), "aa": ("ɑ", 2), "ah": ("ʌ", 3)}
    for x, y, speakers in [(x_train, y_train, range(1, 23)), (x_test, y_test, range(23, 34))]:
        men = [r for r in rows if r["Vowel"] in codes and int(r["Speaker"]) in speakers]
        assert all(r["IPA"] == codes[r["Vowel"]][0] for r in men)
        expected = np.array([[int(r["F1"]) / 1000, int(r["F2"]) / 1000] for r in men])
        np.testing.assert_allclose(x[: len(men)], expected, rtol=1e-6)  # men come first in the table
        assert y[: len(men)].tolist() == [codes[r["Vowel"]][1] for r in men]


# ----------------------------------------------------------------------------- synthetic text
def runs(text, domains, name):
    """The maximal stretches of text written by one domain, and whether each is the text's last."""
    d = data.DOMAINS.index(name)
    edges = np.flatnonzero(np.diff(np.r_[-1, domains, -1]) != 0)  # where the label changes
    return [(text[a:b], b == len(text)) for a, b in zip(edges[:-1], edges[1:], strict=True) if domains[a] == d]


def test_same_seed_same_corpus_different_seed_different_corpus():
    text, domains, names = data.multi_domain_corpus(5000, seed=3)
    again, domains_again, _ = data.multi_domain_corpus(5000, seed=3)
    other, domains_other, _ = data.multi_domain_corpus(5000, seed=4)
    assert text == again and np.array_equal(domains, domains_again)
    assert text != other
    assert names == ("arithmetic", "brackets", "english", "dna")
    assert len(text) == len(domains) == 5000 and domains.dtype == np.int64
    shares = np.bincount(domains, minlength=4) / len(domains)
    assert np.all(shares > 0.15)  # every domain writes a good part of the text


def test_every_character_is_labelled_with_the_domain_whose_alphabet_it_belongs_to():
    text, domains, _ = data.multi_domain_corpus(20_000, seed=0)
    alphabets = {
        "arithmetic": set("0123456789+-*=;"),
        "brackets": set("()[]{}<>"),
        "english": set("abcdefghijklmnopqrstuvwxyz ."),
        "dna": set("ACGT"),
    }
    chars = np.array(list(text))
    for d, name in enumerate(data.DOMAINS):
        assert set(chars[domains == d].tolist()) <= alphabets[name], name
    assert set(text) - set().union(*alphabets.values()) == set()


def test_arithmetic_segments_are_true_equations():
    text, domains, _ = data.multi_domain_corpus(20_000, seed=1)
    checked = 0
    for run, last in runs(text, domains, "arithmetic"):
        assert last or run.endswith(";"), run
        for equation in run.split(";")[:-1]:  # the last piece is "" or an equation cut off by the text's end
            a, op, b, c = re.fullmatch(r"(\d+)([+\-*])(\d+)=(\d+)", equation).groups()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c), equation
            checked += 1
    assert checked > 100


def test_bracket_segments_are_balanced_and_properly_nested():
    text, domains, _ = data.multi_domain_corpus(20_000, seed=2)
    pairs = {")": "(", "]": "[", "}": "{", ">": "<"}
    bracket_runs = runs(text, domains, "brackets")
    assert len(bracket_runs) > 50
    for run, last in bracket_runs:
        stack = []
        for char in run:
            if char in pairs:
                assert stack and stack.pop() == pairs[char], run
            else:
                stack.append(char)
                assert len(stack) <= data.MAX_DEPTH, run
        assert not stack or last, run  # only a run cut off at the end of the text may stay open


def test_english_is_words_of_the_lexicon_in_sentences():
    text, domains, _ = data.multi_domain_corpus(20_000, seed=5)
    for run, last in runs(text, domains, "english"):
        assert last or run.endswith(". "), run
        words = run.replace(".", " ").split()
        assert all(word in data.LEXICON for word in (words if not last else words[:-1])), run


# ----------------------------------------------------------------------------- real text
def test_stdlib_corpus_is_the_sorted_public_modules_read_in_order():
    files = data.stdlib_files()
    assert files and files == sorted(files)
    assert all(f.suffix == ".py" and not f.name.startswith("_") for f in files)
    text = data.stdlib_corpus(50_000)
    assert len(text) == 50_000 and text == data.stdlib_corpus(50_000)
    first = files[0].read_text(encoding="utf-8")
    assert text.startswith(first[:50_000])


# ----------------------------------------------------------------------------- tools
def test_char_vocab_sorts_characters_and_round_trips():
    vocab = data.CharVocab("banana bread")
    assert vocab.chars == [" ", "a", "b", "d", "e", "n", "r"] and len(vocab) == 7
    assert vocab.encode("bad").tolist() == [2, 1, 3]
    assert vocab.decode(vocab.encode("bread banana")) == "bread banana"
    with pytest.raises(KeyError, match="'z'"):
        vocab.encode("zebra")


def test_char_vocab_is_shared_by_both_corpora():
    synthetic, _, _ = data.multi_domain_corpus(2000, seed=0)
    real = data.stdlib_corpus(2000)
    vocab = data.CharVocab(synthetic + real)
    for text in (synthetic, real):
        assert vocab.decode(vocab.encode(text)) == text


def test_random_windows_are_slices_of_the_data_with_targets_shifted_by_one():
    ids = np.arange(100, 400)  # every value names its own position
    x, y = data.random_windows(ids, batch_size=64, context=16, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (64, 16)
    for row_x, row_y in zip(x, y, strict=True):
        start = row_x[0] - 100
        np.testing.assert_array_equal(row_x, ids[start : start + 16])
        np.testing.assert_array_equal(row_y, ids[start + 1 : start + 17])

    short = np.array([5, 6, 7, 8])  # exactly context + 1: one possible window
    x, y = data.random_windows(short, batch_size=3, context=3, rng=np.random.default_rng(0))
    assert x.tolist() == [[5, 6, 7]] * 3 and y.tolist() == [[6, 7, 8]] * 3
    with pytest.raises(ValueError):
        data.random_windows(short, batch_size=1, context=4)


def test_same_seed_same_batches():
    ids = data.CharVocab("abcdefgh").encode("abcdefgh" * 50)
    first = data.random_windows(ids, 8, 10, rng=np.random.default_rng(7))
    second = data.random_windows(ids, 8, 10, rng=np.random.default_rng(7))
    other = data.random_windows(np.arange(400), 8, 10, rng=np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    tm.manual_seed(11)
    from_library = data.random_windows(np.arange(400), 8, 10)
    tm.manual_seed(11)
    assert np.array_equal(from_library[0], data.random_windows(np.arange(400), 8, 10)[0])
    assert not np.array_equal(from_library[0], other[0])


def test_sequential_windows_cover_the_data_once_in_order():
    ids = np.arange(53)
    x, y = data.sequential_windows(ids, context=10)
    assert x.shape == y.shape == (5, 10)  # 50 inputs; the 51st id is the last target
    np.testing.assert_array_equal(x.ravel(), ids[:50])
    np.testing.assert_array_equal(y.ravel(), ids[1:51])
    with pytest.raises(ValueError):
        data.sequential_windows(np.arange(10), context=10)


def test_train_val_split_is_a_contiguous_cut():
    train, val = data.train_val_split("abcdefghij", val_fraction=0.2)
    assert (train, val) == ("abcdefgh", "ij")
    ids = np.arange(1000)
    train, val = data.train_val_split(ids, 0.1)
    assert len(train) == 900 and np.array_equal(np.concatenate([train, val]), ids)
    with pytest.raises(ValueError):
        data.train_val_split(ids, 1.0)


def test_the_jacobs_experiment_runs_from_one_function():
    from tinymoe.models.vowel import BackpropNet, VowelMixture, jacobs_experiment

    rows = jacobs_experiment(n_runs=1, max_epochs=60, lr=0.3,
                             systems={"4 experts": lambda: VowelMixture(4), "BP 6": lambda: BackpropNet(6)})
    assert [r["system"] for r in rows] == ["4 experts", "BP 6"]
    for r in rows:
        assert 0.25 < r["train_acc"] <= 1 and 0.25 < r["test_acc"] <= 1  # better than chance after 60 epochs
    assert 1 <= rows[0]["experts_in_use"] <= 4 and rows[1]["experts_in_use"] is None
