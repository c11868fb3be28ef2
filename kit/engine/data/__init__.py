"""Data for fine-tuning: synthetic tasks, chat formatting, the answer-only loss, batches.
(Your own files: kit.engine.formats.)

An example is a pair of strings, `prompt` and `response`, or a conversation (`messages`:
system, user and assistant turns; kit.engine.formats). Training sees it through the model's chat
template:

    <|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n
    <|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n      <- labels -100
    {response}<|im_end|>                                                <- labels = tokens

The loss is computed on the answer only (prompt positions carry the label -100, which
PyTorch's cross entropy ignores), and the answer ends with the end-of-turn token
`<|im_end|>` so the model learns to stop. We keep the template's default system prompt
(about 20 tokens): it is what the base model was tuned with, so base-model scores and
retention are measured in the setting the model knows.

Tasks (`make_task`):
  "dates"   normalise a date written in one of six styles to ISO 8601 (YYYY-MM-DD).
            The base model gets almost none right; a short LoRA run learns it.
  "extract" pull name, age and current city out of a sentence into a JSON object
            '{"name": "Maria", "age": 34, "city": "Lisbon"}'. Half the sentences state the
            age (in digits or words), a quarter need a small sum ("turns 35 next month"),
            a quarter a subtraction ("It is 2024. ... born in 1990"); many also name a
            second city (where the person came from). Harder: a short run gets it partly
            right, so methods and ranks can differ.

    tasks    the generated tasks      probes   what forgetting is measured on
    tokens   chat template and labels batches  padding and order
"""
from kit.engine.data.batches import MEGABATCH, SAMPLING, batches, collate, group_by_length  # noqa: F401
from kit.engine.data.probes import GENERAL_PROMPTS, RETENTION_PROBE  # noqa: F401
from kit.engine.data.tasks import (CITIES, DATE_RANGE, DATE_STYLES, EXAMPLE_MAKERS,  # noqa: F401
                                   EXTRACT_TEMPLATES, MONTHS, NAMES, ONES, SHORT_YEAR_RANGE, SMALL_TALK,
                                   SYSTEM_PROMPT, TASKS, TENS, chat_example, date_example, extract_answer,
                                   extract_example, make_task, number_words, ordinal, write_date)
from kit.engine.data.tokens import (IGNORE_INDEX, OVERFLOW_POLICIES, OverflowWarning,  # noqa: F401
                                    chat_prompt, encode_conversation, encode_example, end_of_turn,
                                    pad_token_id, tokenize)
