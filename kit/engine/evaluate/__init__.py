"""Evaluation: greedy generation, exact match, validation loss, retention.

Exact match rule (`answers_match`):
  - JSON answers (task "extract", or task=None and the expected answer is a JSON object or
    list): the whole generated answer must parse as JSON and equal the expected value
    after parsing. Key order and whitespace do not matter; types do ("34" is not 34).
    Text around the JSON (a ```json fence, "Here is ...") makes the answer wrong: the
    format is part of what fine-tuning teaches.
  - everything else ("dates", your own data): the answers are equal after strip().
The task comes from the `task=` argument of `exact_match`, else from the expected answer.

    generation  scores that generate answers     scoring  scores read from the logits
"""
from kit.engine.evaluate.generation import (JSON_TASKS, answers_match, exact_match, generate,  # noqa: F401
                                            is_json_answer, reference_answers, retention)
from kit.engine.evaluate.scoring import (answer_scores, divergence, divergences,  # noqa: F401
                                         reference_log_probs, validation_loss)
