"""Every metric against a case computed by hand (the arithmetic is in the comment beside it)."""

from __future__ import annotations

import numpy as np
import pytest

from metapt.metrics import (
    accuracy,
    binary_f1,
    bio_spans,
    classification_scores,
    entity_scores,
    macro_f1,
    matthews_corrcoef,
    multirc_scores,
    normalize_answer,
    pearson,
    recall_at_1,
    record_scores,
    regression_scores,
    relation_scores,
    span_prf,
    spearman,
    squad_exact,
    squad_f1,
    squad_scores,
    srl_scores,
)


def approx(x: float) -> object:
    """Hand-computed values are written to 2 decimals; compare them at that precision."""
    return pytest.approx(x, abs=0.01)


def prf(p: float, r: float, f1: float) -> dict[str, object]:
    return {"precision": approx(p), "recall": approx(r), "f1": approx(f1)}


# --- classification ------------------------------------------------------------------------------


def test_accuracy() -> None:
    # 7 of 8 equal (only index 6 differs) -> 87.5
    assert accuracy([0, 1, 1, 0, 1, 1, 1, 0], [0, 1, 1, 0, 1, 1, 0, 0]) == 87.5
    assert accuracy([], []) == 0.0


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        accuracy([1, 0], [1])


def test_binary_f1() -> None:
    # tp = idx 0,3; fp = idx 1; fn = idx 4 -> 2*2 / (2*2 + 1 + 1) = 66.67
    assert binary_f1([1, 1, 0, 1, 0], [1, 0, 0, 1, 1]) == approx(66.67)
    # positive label other than 1: tp = 1, fp = 0, fn = 1 -> 2 / 3 = 66.67
    assert binary_f1(["yes", "no", "no"], ["yes", "yes", "no"], positive="yes") == approx(66.67)
    # the positive class is neither predicted nor gold: F1 undefined -> 0 (sklearn's zero_division)
    assert binary_f1([0, 0], [0, 0]) == 0.0


def test_macro_f1() -> None:
    # class 0: tp 1 -> 1; class 1: tp 1, fn 1 -> 2/3; class 2: tp 1, fp 1 -> 2/3; mean 7/9 = 77.78
    assert macro_f1([0, 1, 2, 2], [0, 1, 1, 2]) == approx(77.78)
    # class 3 only predicted still counts: class 0 -> 2*2/(4+1) = 0.8, class 3 -> 0; mean 40
    assert macro_f1([0, 0, 3], [0, 0, 0]) == approx(40.0)


def test_mcc_negative() -> None:
    # TP 1, FP 2, FN 1, TN 1 -> (1*1 - 2*1) / sqrt(3 * 2 * 3 * 2) = -1/6 = -16.67
    assert matthews_corrcoef([1, 1, 0, 0, 1], [0, 1, 1, 0, 0]) == approx(-16.67)
    # every prediction wrong on a balanced set -> -100
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == approx(-100.0)


def test_mcc_multiclass() -> None:
    # n = 6, correct = 4, true counts (2, 2, 2), predicted counts (2, 3, 1):
    # cov(t,p) = 4*6 - (4 + 6 + 2) = 12; cov(p,p) = 36 - (4 + 9 + 1) = 22; cov(t,t) = 36 - 12 = 24
    # MCC = 12 / sqrt(24 * 22) = 52.22
    assert matthews_corrcoef([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]) == approx(52.22)


def test_mcc_undefined_is_zero() -> None:
    # a constant prediction makes cov(p,p) = 0
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0
    assert matthews_corrcoef([], []) == 0.0


def test_classification_scores() -> None:
    preds, labels = [1, 1, 0, 0, 1], [0, 1, 1, 0, 0]
    # accuracy 2/5 = 40; F1 tp 1, fp 2, fn 1 -> 2/5 = 40; MCC -16.67 (above)
    got = classification_scores(preds, labels, ["accuracy", "f1", "mcc"])
    assert got == {"accuracy": approx(40.0), "f1": approx(40.0), "mcc": approx(-16.67)}
    with pytest.raises(ValueError, match="allowed: accuracy, f1, macro_f1, mcc"):
        classification_scores(preds, labels, ["auc"])


# --- regression ----------------------------------------------------------------------------------


def test_pearson() -> None:
    # x - mean = (-1, 0, 1); y - mean = (-7/3, -1/3, 8/3); sum xy = 5; sum x^2 = 2; sum y^2 = 114/9
    # r = 5 / sqrt(2 * 114/9) = 15 / sqrt(228) = 99.34
    assert pearson([1, 2, 3], [2, 4, 7]) == approx(99.34)
    assert pearson([1, 2, 3], [5, 3, 1]) == approx(-100.0)
    assert pearson([2, 2, 2], [1, 2, 3]) == 0.0  # constant input: undefined -> 0
    assert pearson([1], [1]) == 0.0


def test_spearman_with_ties() -> None:
    # ranks x = (1, 2.5, 2.5, 4) (the tie shares ranks 2 and 3), ranks y = (1, 3, 2, 4); both mean 2.5
    # centred: (-1.5, 0, 0, 1.5) and (-1.5, .5, -.5, 1.5); sum xy = 4.5, sum x^2 = 4.5, sum y^2 = 5
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9) = 94.87
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == approx(94.87)
    # monotone but not linear -> ranks agree exactly
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == approx(100.0)


def test_regression_scores() -> None:
    got = regression_scores([1, 2, 3, 4], [1, 4, 9, 100])
    assert set(got) == {"pearson", "spearman"}
    assert got["spearman"] == approx(100.0) and got["pearson"] < 90.0


# --- extractive QA -------------------------------------------------------------------------------


def test_normalize_answer() -> None:
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("  An apple, a   day...") == "apple day"
    assert normalize_answer("Theatre-goers") == "theatregoers"  # articles only as whole words


def test_squad_f1_partial_overlap() -> None:
    # pred tokens (big, red, dog), gold (red, dog, barked): 2 shared -> P = R = 2/3 -> F1 = 0.667
    assert squad_f1("the big red dog", ["a red dog barked"]) == approx(2 / 3)
    # pred (red, dog), gold (big, red, dog): P = 1, R = 2/3 -> F1 = 0.8
    assert squad_f1("red dog", ["the big red dog"]) == approx(0.8)


def test_squad_max_over_golds() -> None:
    # vs "cat" 0; vs "big red dog" 0.8; vs "red": P = 1/2, R = 1 -> 0.667; max 0.8
    assert squad_f1("red dog", ["cat", "big red dog", "red"]) == approx(0.8)
    assert squad_exact("Eiffel Tower", ["tower", "the Eiffel tower."]) == 1.0
    assert squad_exact("Eiffel", ["tower", "the Eiffel tower."]) == 0.0


def test_squad_no_answer() -> None:
    # SQuAD 2.0: when either side has no tokens, F1 = EM = 1 iff both are empty
    assert squad_f1("", []) == 1.0 and squad_exact("", []) == 1.0
    assert squad_f1("in 1990", []) == 0.0 and squad_exact("in 1990", []) == 0.0
    assert squad_f1("", ["1990"]) == 0.0
    # a gold that normalises to nothing ("the") is dropped, as in the v2.0 script
    assert squad_exact("", ["the", "cat"]) == 0.0


def test_squad_scores() -> None:
    references = {"q1": ["Denver Broncos"], "q2": ["red dog", "the big red dog"], "q3": [], "q4": ["Paris"]}
    predictions = {"q1": "denver broncos", "q2": "red", "q3": ""}  # q4 missing -> ""
    # EM: q1 1, q2 0, q3 (no-answer, "") 1, q4 0 -> 2/4 = 50
    # F1: q1 1; q2 max("red" vs "red dog" = 2/3, vs "big red dog" = 1/2) = 2/3; q3 1; q4 0 -> (8/3)/4
    assert squad_scores(predictions, references) == {"exact_match": approx(50.0), "f1": approx(66.67)}
    assert squad_scores({}, {}) == {"exact_match": 0.0, "f1": 0.0}


def test_record_scores() -> None:
    references = {"a": ["Obama", "Barack Obama"], "b": ["the United States"], "c": ["NATO"]}
    predictions = {"a": "obama", "b": "United States of America"}  # c unanswered -> 0
    # a: EM 1, F1 1; b: (united, states, of, america) vs (united, states): P = 1/2, R = 1 -> F1 2/3
    # EM 1/3 = 33.33; F1 (1 + 2/3) / 3 = 55.56
    assert record_scores(predictions, references) == {"exact_match": approx(33.33), "f1": approx(55.56)}
    # ReCoRD uses the v1.1 F1: no empty-answer rule, so two empty strings share no token -> F1 0
    assert record_scores({"x": ""}, {"x": [""]}) == {"exact_match": 100.0, "f1": 0.0}


# --- spans ---------------------------------------------------------------------------------------


def test_bio_spans_conlleval() -> None:
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O", "B-MISC"]
    # I-LOC after O starts a chunk; B-LOC ends it and starts another; I-ORG after LOC starts one too;
    # the last chunk is closed by the end of the sentence
    assert bio_spans(tags) == [("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7), ("MISC", 8, 9)]
    assert bio_spans([]) == []
    with pytest.raises(ValueError, match="position 1"):
        bio_spans(["O", "PER"])


def test_span_prf() -> None:
    # 2 of 3 predicted right (a, c), 2 of 4 gold found -> P 66.67, R 50, F1 = 2PR/(P+R) = 4/7 = 57.14
    assert span_prf([{"a", "b"}, {"c"}], [{"a"}, {"c", "d", "e"}]) == prf(66.67, 50.0, 57.14)
    assert span_prf([set()], [set()]) == prf(0.0, 0.0, 0.0)


def test_entity_scores() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "I-ORG", "O"]]
    # PER right; I-LOC after O is read as a LOC chunk, so right; ORG ends one token early, so wrong
    # 2 of 3 predicted, 2 of 3 gold -> 66.67 each
    assert entity_scores(pred, gold) == prf(66.67, 66.67, 66.67)


def test_srl_scores() -> None:
    gold = [
        ["B-ARG0", "I-ARG0", "B-V", "B-ARG1", "I-ARG1", "I-ARG1"],
        ["B-V", "O", "B-ARGM-TMP"],
    ]
    pred = [
        ["B-ARG0", "I-ARG0", "B-V", "B-ARG1", "I-ARG1", "O"],  # ARG1 one token short
        ["O", "B-ARG0", "B-ARGM-TMP"],  # V missed (excluded, so no penalty), spurious ARG0
    ]
    # right: ARG0, ARGM-TMP = 2; predicted: ARG0, ARG1 (wrong bounds: a false positive), ARG0, TMP = 4;
    # gold: ARG0, ARG1 (missed: a false negative), TMP = 3 -> P 50, R 66.67, F1 4/7 = 57.14
    assert srl_scores(pred, gold) == prf(50.0, 66.67, 57.14)


def test_srl_excludes_v() -> None:
    # the V span is right but not counted: there is nothing to score
    assert srl_scores([["B-V", "O"]], [["B-V", "O"]]) == prf(0.0, 0.0, 0.0)
    # right boundaries with the wrong role: one false positive and one false negative
    assert srl_scores([["B-V", "B-ARG1"]], [["B-V", "B-ARG2"]]) == prf(0.0, 0.0, 0.0)


def test_srl_continuation_joins_argument() -> None:
    gold = [["B-ARG1", "I-ARG1", "B-V", "B-C-ARG1"]]
    # srl-eval.pl: ARG1 + C-ARG1 is one argument, right only if every piece is
    assert srl_scores(gold, gold) == prf(100.0, 100.0, 100.0)
    assert srl_scores([["B-ARG1", "I-ARG1", "B-V", "O"]], gold) == prf(0.0, 0.0, 0.0)
    # a C-ARG1 with no ARG1 before it is read as a plain ARG1
    assert srl_scores([["O", "B-V", "B-C-ARG1"]], [["O", "B-V", "B-ARG1"]]) == prf(100.0, 100.0, 100.0)


def test_relation_scores() -> None:
    gold = [
        {((0, 1), (3, 5), "Work_For"), ((3, 5), (7, 8), "Located_In")},
        {((0, 2), (4, 5), "Live_In")},
    ]
    pred = [
        {((0, 1), (3, 5), "Work_For"), ((3, 4), (7, 8), "Located_In")},  # head entity one token short
        {((0, 2), (4, 5), "Live_In")},
    ]
    # the wrong-boundary triple is a false positive and its gold a false negative: 2/3, 2/3 -> 66.67
    assert relation_scores(pred, gold) == prf(66.67, 66.67, 66.67)


# --- MultiRC and ranking -------------------------------------------------------------------------


def test_multirc_scores() -> None:
    groups = ["q1", "q1", "q1", "q2", "q2", "q3"]
    labels = [1, 0, 1, 0, 1, 0]
    preds = [1, 0, 1, 1, 1, 0]
    # q1 all right, q2 wrong at index 3, q3 right -> EM 2/3 = 66.67
    # f1a over options: tp 3 (idx 0, 2, 4), fp 1 (idx 3), fn 0 -> 6/7 = 85.71
    assert multirc_scores(preds, labels, groups) == {"f1a": approx(85.71), "exact_match": approx(66.67)}
    assert multirc_scores([], [], []) == {"f1a": 0.0, "exact_match": 0.0}


def test_recall_at_1() -> None:
    scores = [[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]]
    # row argmaxes 0, 2, 2 vs diagonal 0, 1, 2 -> 2 of 3 = 66.67
    assert recall_at_1(scores) == approx(66.67)
    # more candidates than queries; row 1's best is column 2, not 1 -> 1 of 2 = 50
    assert recall_at_1(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])) == 50.0
    # ties go to the first column: row 0 right, row 1 wrong
    assert recall_at_1([[1.0, 1.0], [1.0, 1.0]]) == 50.0
    assert recall_at_1(np.zeros((0, 0))) == 0.0
    with pytest.raises(ValueError, match="candidates >= queries"):
        recall_at_1([[1.0], [2.0]])
