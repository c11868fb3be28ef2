"""Data for fine-tuning: synthetic tasks, chat formatting, the answer-only loss, batches.
(Your own files: kit.engine.formats.)

An example is a pair of strings, `prompt` and `response`, or a conversation (`messages`:
system, user and assistant turns; kit.engine.formats). Training sees it through the model's chat
template:

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\\n
    <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n      <- labels -100
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
"""
from __future__ import annotations

import datetime
import json
import random
import warnings
from typing import Iterator

import torch
from datasets import Dataset, DatasetDict

TASKS = ("dates", "extract", "chat")
OVERFLOW_POLICIES = ("truncate", "drop", "error")
IGNORE_INDEX = -100  # label value that torch.nn.functional.cross_entropy skips


class OverflowWarning(UserWarning):
    """Examples were truncated or dropped because they exceed max_length."""



# =============================================================================== tasks
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def write_date(d: datetime.date, style: str) -> str:
    """One date in one of DATE_STYLES. Numeric styles state their field order, so every
    prompt has exactly one right answer; two-digit years ('21) always mean 20xx."""
    month = MONTHS[d.month - 1]
    if style == "month_day_year":      # March 5, 2021
        return f"{month} {d.day}, {d.year}"
    if style == "day_month_year":      # 5 March 2021
        return f"{d.day} {month} {d.year}"
    if style == "us_numeric":          # 3/5/2021 (month/day/year)
        return f"{d.month}/{d.day}/{d.year} (month/day/year)"
    if style == "eu_numeric":          # 05.03.2021 (day.month.year)
        return f"{d.day:02d}.{d.month:02d}.{d.year} (day.month.year)"
    if style == "short_ordinal":       # Mar 5th, '21
        return f"{month[:3]} {ordinal(d.day)}, '{d.year % 100:02d}"
    if style == "ordinal_of":          # the 5th of March, 2021
        return f"the {ordinal(d.day)} of {month}, {d.year}"
    raise ValueError(f"style must be one of {DATE_STYLES}; got {style!r}.")


DATE_STYLES = ("month_day_year", "day_month_year", "us_numeric", "eu_numeric",
               "short_ordinal", "ordinal_of")
DATE_RANGE = (datetime.date(1950, 1, 1), datetime.date(2049, 12, 31))
SHORT_YEAR_RANGE = (datetime.date(2000, 1, 1), datetime.date(2029, 12, 31))  # for '21


def date_example(rng: random.Random) -> tuple[str, str]:
    """A random date in a random style -> (prompt, "YYYY-MM-DD")."""
    style = rng.choice(DATE_STYLES)
    lo, hi = SHORT_YEAR_RANGE if style == "short_ordinal" else DATE_RANGE
    d = datetime.date.fromordinal(rng.randint(lo.toordinal(), hi.toordinal()))
    prompt = f"Convert the date to ISO 8601 (YYYY-MM-DD): {write_date(d, style)}"
    return prompt, d.isoformat()


NAMES = ["Maria", "Ahmed", "Yuki", "Olga", "Carlos", "Priya", "Liam", "Fatima", "Chen",
         "Sofia", "Kwame", "Elena", "Tomas", "Aisha", "Lars", "Mei", "Diego", "Ingrid",
         "Ravi", "Nadia", "Jonas", "Amara", "Pedro", "Hana", "Oscar", "Leila", "Mateo",
         "Zara", "Viktor", "Keiko", "Samuel", "Nora", "Arjun", "Greta", "Emeka", "Lucia",
         "Felix", "Ines", "Hugo", "Anya", "Tariq", "Clara", "Bruno", "Selin", "Marek",
         "Rosa", "Kofi", "Ada", "Emil", "Layla", "Pavel", "Julia", "Omar", "Freya",
         "Nikolai", "Chloe", "Rafael", "Ewa", "Sione", "Mila"]
CITIES = ["Lisbon", "Porto", "Madrid", "Paris", "Berlin", "Vienna", "Prague", "Warsaw",
          "Oslo", "Helsinki", "Dublin", "Edinburgh", "Rome", "Milan", "Athens", "Cairo",
          "Nairobi", "Lagos", "Accra", "Tokyo", "Osaka", "Seoul", "Mumbai", "Delhi",
          "Bangkok", "Hanoi", "Manila", "Sydney", "Auckland", "Toronto", "Chicago",
          "Denver", "Boston", "Seattle", "Lima", "Santiago", "Bogota", "Havana",
          "Istanbul", "Tbilisi", "Kyiv", "Riga", "Tallinn", "Zurich", "Geneva", "Lyon",
          "Marseille", "Hamburg", "Munich", "Krakow", "Budapest", "New York", "Los Angeles",
          "Mexico City", "Buenos Aires", "Cape Town", "Kuala Lumpur", "Hong Kong",
          "San Francisco", "Rio de Janeiro"]
ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """20 <= n <= 99 in words: 34 -> 'thirty-four'."""
    if not 20 <= n <= 99:
        raise ValueError(f"n must be in 20..99; got {n}.")
    return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")


# Sentence templates, by what it takes to find the age. {n} name, {c} the current city
# (always the answer's city), {o} another city (a distractor), {a} the age as written
# (digits, or words 30% of the time), {a1} age + 1, {k} 2..9 years, {ak} age + k,
# {ap} age - k, {b} birth year, {y} the year "now" (age = y - b), {s} a year in between.
EXTRACT_TEMPLATES = {
    "stated": [      # the age is in the sentence
        "{n}, {a}, moved to {c} last year.",
        "{n} is {a} years old and lives in {c}.",
        "At {a}, {n} left {o} for {c}.",
        "The {a}-year-old {n} runs a small bakery in {c}.",
        "{n} ({a}) works in {c} but grew up in {o}.",
        "Name: {n}. Hometown: {o}. Current city: {c}. Age: {a}.",
    ],
    "relative": [    # a small addition or subtraction
        "{n} turns {a1} next month; the party will be in {c}, where {n} lives.",
        "{n} will be {ak} in {k} years and plans to stay in {c}.",
        "{k} years ago {n} was {ap} and lived in {o}; now {n} lives in {c}.",
    ],
    "birth_year": [  # age = the year now - the birth year
        "It is {y}. {n} was born in {b} and lives in {c}.",
        "In {y}, {n} (born {b}) moved from {o} to {c}.",
        "{n}, born in {b}, has lived in {c} since {s}. The year is now {y}.",
        "The year is {y}: {n} from {c}, born in {b}, won the city marathon.",
    ],
}


def extract_answer(name: str, age: int, city: str) -> str:
    """The target JSON, keys in a fixed order: {"name": ..., "age": <int>, "city": ...}."""
    return json.dumps({"name": name, "age": age, "city": city})


def extract_example(rng: random.Random) -> tuple[str, str]:
    """A random sentence about a person -> (prompt, JSON answer)."""
    kind = rng.choice(["stated", "stated", "relative", "birth_year"])  # 1/2, 1/4, 1/4
    template = rng.choice(EXTRACT_TEMPLATES[kind])
    name = rng.choice(NAMES)
    city, other = rng.sample(CITIES, 2)
    age, k, y = rng.randint(20, 88), rng.randint(2, 9), rng.randint(2000, 2030)
    written = number_words(age) if rng.random() < 0.3 else str(age)
    sentence = template.format(n=name, c=city, o=other, a=written, a1=age + 1, k=k,
                               ak=age + k, ap=age - k, b=y - age, y=y,
                               s=rng.randint(y - age + 1, y))
    return f"Extract name, age and city as JSON: {sentence}", extract_answer(name, age, city)


SYSTEM_PROMPT = "You are a careful assistant: dates in ISO 8601, people's details as JSON."
SMALL_TALK = [("Thanks!", "You're welcome."), ("Great, thank you.", "Glad to help."),
              ("Can you help me with some data?", "Of course. Send it over.")]


def chat_example(rng: random.Random) -> tuple[str, list[dict]]:
    """A conversation of varying length: an optional system prompt, one to three requests
    (a date to normalise, or a sentence to extract as JSON), sometimes small talk between
    them, and always a request last. -> (a key to keep the conversations distinct, turns)."""
    turns = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
    for i in range(rng.randint(1, 3)):
        if i and rng.random() < 0.4:
            user, assistant = rng.choice(SMALL_TALK)
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        user, assistant = (date_example if rng.random() < 0.5 else extract_example)(rng)
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return json.dumps(turns), turns


EXAMPLE_MAKERS = {"dates": date_example, "extract": extract_example, "chat": chat_example}


def make_task(name: str, n_train: int = 400, n_val: int = 50, n_test: int = 100,
              seed: int = 0):
    """A synthetic task as a DatasetDict with splits train/validation/test and columns
    prompt, response ("chat": one column, messages: conversations of one to three requests,
    scored on their last answer). Deterministic under `seed`; no prompt appears in two splits.
    The test split is drawn first, then validation, then train, so for a given seed the
    test set does not change when you ask for more (or fewer) training examples."""
    if name not in EXAMPLE_MAKERS:
        raise ValueError(f"name must be one of {TASKS}; got {name!r}. "
                         "For your own data use load_local(...) or load_hub(...).")
    sizes = {"test": n_test, "validation": n_val, "train": n_train}
    for split, n in sizes.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n_{'val' if split == 'validation' else split} must be an "
                             f"integer >= 0; got {n!r}.")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for split, n in sizes.items():
        rows = {"messages": []} if name == "chat" else {"prompt": [], "response": []}
        tries = 0
        while len(next(iter(rows.values()))) < n:
            tries += 1
            if tries > 50 * (n + 10):
                raise ValueError(f"Could not draw {n} distinct {name!r} examples; ask for fewer.")
            prompt, response = EXAMPLE_MAKERS[name](rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            if name == "chat":
                rows["messages"].append(response)
            else:
                rows["prompt"].append(prompt)
                rows["response"].append(response)
        splits[split] = Dataset.from_dict(rows)
    return DatasetDict(train=splits["train"], validation=splits["validation"],
                       test=splits["test"])


# Short factual questions the base SmolLM2-135M-Instruct answers correctly under greedy
# decoding (each kept only after checking with kit.engine.evaluate.retention). Fine-tuning that
# damages general knowledge shows up as a falling share of these.
RETENTION_PROBE: list[tuple[str, str]] = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of the United Kingdom?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of Poland?", "Warsaw"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of South Korea?", "Seoul"),
    ("What is the capital of India?", "Delhi"),
    ("What is the capital of Mexico?", "Mexico City"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What language is mainly spoken in Brazil?", "Portuguese"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("What is the currency of Japan?", "yen"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("Which organ pumps blood through the human body?", "heart"),
    ("What is the longest river in Africa?", "Nile"),
    ("Who developed the theory of relativity?", "Einstein"),
    ("Which gas do humans need to breathe to stay alive?", "oxygen"),
]


# General prompts for forgetting measured without generation noise (kit.engine.evaluate.divergence):
# the base model answers each once, greedily; a fine-tuned model is then scored, token by
# token, on those same answers. Whether the base's answer is right does not matter: the
# measure is how far the model's next-token distributions moved away from the base's.
_COUNTRIES = ["Portugal", "Spain", "Italy", "Sweden", "Finland", "Denmark", "Hungary", "Turkey",
              "Argentina", "Chile", "Peru", "Colombia", "Nigeria", "Ghana", "Morocco", "Vietnam",
              "Thailand", "Indonesia", "the Philippines", "New Zealand"]
_WORDS = ["happy", "fast", "big", "cold", "bright", "quiet", "strong", "old", "early", "rich"]
_THINGS = ["a river", "a library", "a bicycle", "a thunderstorm", "a volcano", "a violin",
           "a lighthouse", "a desert", "a beehive", "a glacier"]
_TOPICS = ["why the sky is blue", "how a rainbow forms", "what a vaccine does", "how bees make honey",
           "why we have seasons", "what gravity is", "how a compass works", "why leaves change colour",
           "what an atom is", "how plants drink water"]
GENERAL_PROMPTS: list[str] = (
    [f"What is the capital of {c}?" for c in _COUNTRIES]
    + [f"Give a word that means the same as '{w}'." for w in _WORDS]
    + [f"What is the opposite of '{w}'?" for w in _WORDS]
    + [f"Describe {t} in one sentence." for t in _THINGS]
    + [f"Explain {t} in two sentences." for t in _TOPICS]
    + [f"What is {a} plus {b}?" for a, b in zip(range(12, 72, 6), range(7, 97, 9))]
    + [f"Name an animal that lives in {p}." for p in ("the ocean", "the jungle", "the Arctic",
                                                       "the desert", "a river", "the mountains",
                                                       "a forest", "a city", "the savanna", "a cave")]
    + [f"Write a short sentence about {x}." for x in ("breakfast", "friendship", "the moon", "winter",
                                                       "music", "a long journey", "rain", "a garden",
                                                       "the internet", "a birthday")]
    + [f"Which is heavier, {a} or {b}?" for a, b in (("a feather", "a brick"), ("a car", "a bicycle"),
                                                      ("an elephant", "a mouse"), ("a cup", "a table"),
                                                      ("a coin", "a book"), ("a whale", "a dolphin"),
                                                      ("an apple", "a watermelon"), ("a pencil", "a chair"),
                                                      ("a cat", "a horse"), ("a leaf", "a stone"))]
    + [f"Translate the word '{w}' into French." for w in ("house", "water", "friend", "book", "tree",
                                                           "sun", "bread", "dog", "school", "city")]
)  # 110 prompts


# =============================================================================== formatting
def chat_prompt(tokenizer, prompt) -> str:
    """The prompt as the model sees it at generation time: chat template, the user turn (or
    `prompt` as a list of turns: a conversation so far), then the assistant header
    (`add_generation_prompt=True`). A tokenizer without a chat template gets a plain
    'User: ...\\nAssistant: ' format."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in turns) + "Assistant: "


def end_of_turn(tokenizer) -> tuple[str, int]:
    """The token that closes the assistant's turn: `<|im_end|>` for ChatML models such as
    SmolLM2 (and Qwen), otherwise the tokenizer's eos token."""
    token = "<|im_end|>"
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        token, token_id = tokenizer.eos_token, tokenizer.eos_token_id
    return token, token_id


def pad_token_id(tokenizer) -> int:
    """The token id that fills padded positions, one rule for training and generation:
    the tokenizer's pad token, else the end-of-turn token (`end_of_turn`).

    Padded positions are never attended to (attention_mask 0) nor scored (label -100),
    so the choice does not change the loss; but `collate` and `model.generate` need a
    real id, and many causal-LM tokenizers have no pad token. The fallback is the
    end-of-turn token because every answer ends with it and generation stops on it: a
    row that finished early is filled with more "end of turn". For a model without
    <|im_end|>, `end_of_turn` is the eos token, the usual fallback."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    token_id = end_of_turn(tokenizer)[1]
    if token_id is None:
        raise ValueError("The tokenizer has no pad token, no <|im_end|> and no eos token, so "
                         "there is no id to pad with. Set one, e.g. tokenizer.pad_token = "
                         "tokenizer.unk_token.")
    return token_id


def encode_example(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """-> (prompt_ids, answer_ids). The answer is the response's tokens + end-of-turn.
    Both parts are tokenized separately, exactly as generation sees them."""
    prompt_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids + [end_of_turn(tokenizer)[1]]


def encode_conversation(tokenizer, turns: list[dict]) -> tuple[list[int], list[int]]:
    """-> (input_ids, labels) of a whole conversation: labels are the tokens of every assistant
    turn's content and its end-of-turn token, -100 everywhere else (system and user turns, the
    template's role headers). Each assistant turn is tokenized as generation would see it: the
    conversation before it with the assistant header (`chat_prompt`), then its answer."""
    eot_token, eot_id = end_of_turn(tokenizer)
    ids, labels, seen = [], [], ""
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = chat_prompt(tokenizer, turns[:i])          # ... up to "<|im_start|>assistant\n"
        if not before.startswith(seen):
            raise ValueError("This tokenizer's chat template does not render a conversation turn by "
                             "turn, so the answers cannot be told apart; use prompt/response data.")
        context = tokenizer(before[len(seen):], add_special_tokens=False)["input_ids"]
        answer = tokenizer(turn["content"], add_special_tokens=False)["input_ids"] + [eot_id]
        ids += context + answer
        labels += [IGNORE_INDEX] * len(context) + answer
        seen = before + turn["content"] + eot_token
    return ids, labels


def _tokenize_split(ds, tokenizer, max_length: int, overflow: str, split: str):
    if "messages" in ds.column_names:
        return _tokenize_conversations(ds, tokenizer, max_length, overflow, split)
    for col in ("prompt", "response"):
        if col not in ds.column_names:
            raise ValueError(f"The {split} data needs a {col!r} column; it has {ds.column_names}. "
                             "Use make_task, load_local or load_hub, which produce prompt/response.")
    new = {"input_ids": [], "attention_mask": [], "labels": []}
    kept, truncated, dropped = [], 0, 0
    for i, (prompt, response) in enumerate(zip(ds["prompt"], ds["response"])):
        prompt_ids, answer_ids = encode_example(tokenizer, prompt, response)
        length = len(prompt_ids) + len(answer_ids)
        if length > max_length:
            if overflow == "error":
                raise ValueError(
                    f"Example {i} of {split} has {length} tokens, more than max_length="
                    f"{max_length}. Raise max_length, shorten the example, or pass "
                    "overflow='truncate' (cut the prompt's start) or overflow='drop'.")
            if overflow == "drop" or len(answer_ids) >= max_length:
                dropped += 1
                continue
            prompt_ids = prompt_ids[length - max_length:]  # keep the prompt's end + whole answer
            truncated += 1
        kept.append(i)
        new["input_ids"].append(prompt_ids + answer_ids)                       # (T,)
        new["attention_mask"].append([1] * (len(prompt_ids) + len(answer_ids)))
        new["labels"].append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)    # loss on answer
    if truncated or dropped:
        warnings.warn(f"{split}: {len(ds)} examples, max_length={max_length}: truncated the "
                      f"prompt of {truncated}, dropped {dropped} (overflow={overflow!r}).",
                      OverflowWarning, stacklevel=3)
    if len(ds) and not kept:
        raise ValueError(f"Every example of {split} is longer than max_length={max_length}; "
                         "raise max_length.")
    return Dataset.from_dict({**ds.select(kept).to_dict(), **new})


def _tokenize_conversations(ds, tokenizer, max_length: int, overflow: str, split: str):
    """Conversations (a messages column): the loss on every assistant turn. Too long ones lose
    their first tokens (overflow="truncate"; the last answer is kept), or are dropped/refused."""
    new = {"input_ids": [], "attention_mask": [], "labels": []}
    kept, truncated, dropped = [], 0, 0
    for i, turns in enumerate(ds["messages"]):
        ids, labels = encode_conversation(tokenizer, turns)
        if len(ids) > max_length:
            if overflow == "error":
                raise ValueError(f"Conversation {i} of {split} has {len(ids)} tokens, more than "
                                 f"max_length={max_length}. Raise max_length, or pass overflow="
                                 "'truncate' (drop its first tokens) or overflow='drop'.")
            ids, labels = ids[-max_length:], labels[-max_length:]
            if overflow == "drop" or all(x == IGNORE_INDEX for x in labels):
                dropped += 1
                continue
            truncated += 1
        kept.append(i)
        new["input_ids"].append(ids)
        new["attention_mask"].append([1] * len(ids))
        new["labels"].append(labels)
    if truncated or dropped:
        warnings.warn(f"{split}: {len(ds)} conversations, max_length={max_length}: truncated "
                      f"{truncated}, dropped {dropped} (overflow={overflow!r}).", OverflowWarning,
                      stacklevel=3)
    if len(ds) and not kept:
        raise ValueError(f"Every conversation of {split} is longer than max_length={max_length}; "
                         "raise max_length.")
    return Dataset.from_dict({**ds.select(kept).to_dict(), **new})


def tokenize(data, tokenizer, max_length: int = 256, overflow: str = "truncate"):
    """Add input_ids, attention_mask and labels to a Dataset or every split of a DatasetDict.

    labels = -100 on the prompt (chat template + user turn + assistant header), the token
    ids on the answer (response + end-of-turn). Too long examples (overflow):
      "truncate"  drop tokens from the START of the prompt (the system prompt goes first),
                  keep the whole answer; an answer that alone fills max_length is dropped.
      "drop"      drop the example.
      "error"     raise a ValueError naming the example and max_length.
    Truncations and drops are counted in an OverflowWarning."""
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}; got {overflow!r}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2; got {max_length!r}. Try 256.")
    if isinstance(data, DatasetDict):
        if all(len(d) == 0 for d in data.values()):
            raise ValueError("The DatasetDict is empty (no examples in any split).")
        return DatasetDict({k: _tokenize_split(d, tokenizer, max_length, overflow, k)
                            for k, d in data.items()})
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError("The dataset is empty: there is nothing to tokenize.")
        return _tokenize_split(data, tokenizer, max_length, overflow, "data")
    raise ValueError(f"data must be a datasets.Dataset or DatasetDict; got {type(data).__name__}. "
                     "Build one with make_task, load_local or load_hub.")


# =============================================================================== batches
def collate(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized examples to the longest one (dynamic padding):
    input_ids with pad_token_id, attention_mask with 0, labels with -100."""
    if not features:
        raise ValueError("features is empty: collate needs at least one example.")
    T = max(len(f["input_ids"]) for f in features)
    pad = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, value in pad.items():
        rows = [list(f[key]) + [value] * (T - len(f[key])) for f in features]
        out[key] = torch.tensor(rows, dtype=torch.long)  # (B, T)
    return out


SAMPLING = ("random", "group_by_length", "sequential")   # transformers' train_sampling_strategy names
MEGABATCH = 50   # group_by_length sorts by length within windows of 50 batches (as transformers does)


def group_by_length(order: list[int], lengths: list[int], batch_size: int, rng: random.Random) -> list[int]:
    """`order` (a shuffled epoch) regrouped so that each batch holds examples of similar length:
    sorted by length within windows of MEGABATCH batches, then the batches shuffled. Every
    example still appears once; a batch pads to its own longest example, so less padding."""
    window = batch_size * MEGABATCH
    grouped = []
    for i in range(0, len(order), window):
        grouped += sorted(order[i:i + window], key=lambda j: -lengths[j])
    chunks = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(chunks)
    return [j for chunk in chunks for j in chunk]


def batches(tokenized, batch_size: int, pad_token_id: int, seed: int = 0,
            shuffle: bool = True, start: int = 0,
            shard: tuple[int, int] = (0, 1), sampling: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of collated batches. Each epoch is a fresh seeded permutation
    (or the original order with shuffle=False); batches run across epoch boundaries,
    so every batch has exactly batch_size examples. Same seed -> same stream.

    sampling: "random" (the default: shuffle=True), "sequential" (shuffle=False) or
           "group_by_length" (each epoch shuffled, then grouped by length: less padding).

    start: skip this many of this stream's batches (resuming at step k with grad_accum a
           skips k * a), without collating them.
    shard: (rank, world) for data-parallel training: process `rank` of `world` takes
           batches rank, rank + world, rank + 2*world, ... of the one seeded stream, so
           the processes see different examples and together cover the data as one
           process would.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    rank, world = shard
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world; got {shard!r}.")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer >= 0 (batches to skip); got {start!r}.")
    if "input_ids" not in tokenized.column_names:
        raise ValueError("batches needs tokenized data (input_ids, attention_mask, labels); "
                         "call kit.engine.data.tokenize(data, tokenizer) first.")
    if len(tokenized) == 0:
        raise ValueError("The tokenized dataset is empty: there is nothing to batch.")
    sampling = sampling or ("random" if shuffle else "sequential")
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {list(SAMPLING)}; got {sampling!r}.")
    cols = tokenized.select_columns(["input_ids", "attention_mask", "labels"]).to_dict()
    rows = [{k: cols[k][i] for k in cols} for i in range(len(tokenized))]
    lengths = [len(r["input_ids"]) for r in rows]
    rng = random.Random(seed)
    pending: list[int] = []
    position = 0  # index of the next batch in the one global stream
    while True:
        while len(pending) < batch_size:
            order = list(range(len(rows)))
            if sampling != "sequential":
                rng.shuffle(order)
            if sampling == "group_by_length":
                order = group_by_length(order, lengths, batch_size, rng)
            pending += order
        chosen, pending = pending[:batch_size], pending[batch_size:]
        mine = position % world == rank
        position += 1
        if not mine:
            continue
        if start > 0:
            start -= 1
            continue
        yield collate([rows[i] for i in chosen], pad_token_id)
