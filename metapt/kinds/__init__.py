"""Task kinds: one module per kind (data -> batches, head, predictions, metrics) and the registry of their
implementations. What a spec may say about a kind (its heads, losses, options ...) is catalog.KINDS."""

from metapt.kinds import (
    capitalization_prediction,
    classification,
    extractive_qa,
    ir_relevance,
    masked_lm,
    multiple_choice,
    relation_extraction,
    replaced_token_detection,
    response_selection,
    sentence_distance,
    sentence_reordering,
    span_selection,
    srl,
    token_classification,
    token_document_relation,
)
from metapt.kinds.base import Kind

IMPLEMENTATIONS: dict[str, Kind] = {
    "masked_lm": masked_lm.KIND,
    "sentence_reordering": sentence_reordering.KIND,
    "sentence_distance": sentence_distance.KIND,
    "response_selection": response_selection.KIND,
    "span_selection": span_selection.KIND,
    "capitalization_prediction": capitalization_prediction.KIND,
    "token_document_relation": token_document_relation.KIND,
    "ir_relevance": ir_relevance.KIND,
    "replaced_token_detection": replaced_token_detection.KIND,
    "classification": classification.KIND,
    "regression": classification.REGRESSION_KIND,
    "token_classification": token_classification.KIND,
    "srl": srl.KIND,
    "relation_extraction": relation_extraction.KIND,
    "extractive_qa": extractive_qa.KIND,
    "multiple_choice": multiple_choice.KIND,
}
