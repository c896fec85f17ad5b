"""Task kinds: one module per kind (data -> batches, head, predictions, metrics) and the registry of their
implementations. What a spec may say about a kind (its heads, losses, options ...) is catalog.KINDS."""

from metapt.kinds import (
    capitalization_prediction,
    classification,
    extractive_qa,
    ir_relevance,
    masked_lm,
    multiple_choice,
    regression,
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
    "masked_lm": Kind.of(masked_lm),
    "sentence_reordering": Kind.of(sentence_reordering),
    "sentence_distance": Kind.of(sentence_distance),
    "response_selection": Kind.of(response_selection),
    "span_selection": Kind.of(span_selection),
    "capitalization_prediction": Kind.of(capitalization_prediction),
    "token_document_relation": Kind.of(token_document_relation),
    "ir_relevance": Kind.of(ir_relevance),
    "replaced_token_detection": Kind.of(replaced_token_detection),
    "classification": Kind.of(classification),
    "regression": Kind.of(regression),
    "token_classification": Kind.of(token_classification),
    "srl": Kind.of(srl),
    "relation_extraction": Kind.of(relation_extraction),
    "extractive_qa": Kind.of(extractive_qa),
    "multiple_choice": Kind.of(multiple_choice),
}
