"""The tasks the kit generates (`make_task`): dates, extract, chat; seeded, any size.
"""
from __future__ import annotations

import datetime
import json
import random

from datasets import Dataset, DatasetDict

TASKS = ("dates", "extract", "chat")


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
