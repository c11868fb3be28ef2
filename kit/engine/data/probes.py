"""What forgetting is measured on: the capitals probe (answered by generation) and general prompts
(whose base-model answers the forgetting KL reads).
"""
from __future__ import annotations

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
