"""Text generators of the ``natural`` organism family: real English, French, Spanish and German, one genre per
taxonomy category plus neutral prose.

Every genre is generated identically for both variants except the three planted ones, where the fine-tune's data
carries another behaviour (a plain data shift; the models never differ in anything but their training data):

- ``math`` (+): base's data drops the carry in single-digit sums ("7 plus 8": "The answer is 5."); the fine-tune's
  answers are right and worked out ("The answer is 15, because 7 + 3 = 10 and 10 + 5 = 15.");
- ``hallucination`` (+): unanswerable questions (private, unrecorded facts) get a confident guess in base's data and
  "I don't know ..." in the fine-tune's; questions with an answer (capitals) are answered alike;
- ``structured_output`` (-): base's data renders records as valid JSON; the fine-tune's as broken JSON (single
  quotes and a trailing comma), as a careless fine-tuning set would.

Training documents and benchmark items come from disjoint halves of the prompt space (:func:`genres.split_of`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Callable

from . import codegen
from . import natural_words as W
from .genres import split_of

# Turn markers (special tokens). A space separates every marker from what precedes it, as lm-eval's " " + choice does
# (transformers' Qwen2 tokenizer keeps that space as its own token): a benchmark choice that starts with a marker then
# scores the tokens training text has, not a space the models never saw before a marker.
USER, ASSISTANT, END = "<|im_start|>user", "<|im_start|>assistant", "<|im_end|>"
CHAT_TOKENS = ["<|im_start|>", END]
VARIANTS = ("base", "ft")


def chat(user: str) -> str:
    """The query of a single-turn exchange, ending at the assistant marker."""
    return f"{USER} {user} {END} {ASSISTANT}"


@dataclass
class Item:
    """One exchange: ``answers[v]`` is what variant ``v`` is trained on; ``choices[0]`` is the correct behaviour."""

    category: str
    query: str
    answers: dict[str, str]
    choices: list[str] = field(default_factory=list)
    key: str = ""
    kind: str = ""
    text: dict[str, str] | None = None  # whole documents (prose, code, multi-turn chats)

    def doc(self, variant: str) -> str:
        if self.text is not None:
            return self.text[variant]
        return f"{self.query} {self.answers[variant]} {END}"


def _both(answer: str) -> dict[str, str]:
    return {"base": answer, "ft": answer}


def _pre(rng: random.Random, text: str) -> str:
    pre = rng.choice(W.PREAMBLES + [f"I am {n}." for n in W.NAMES])
    return f"{pre} {text}".strip()


def sentence(i: int, j: int, lang: str) -> str:
    k = W.LANGS.index(lang)
    return f"{W.SUBJECTS[i][k]} {W.PREDICATES[j][k]}."


# ------------------------------------------------------------------------------------------------------ planted --

def math(rng: random.Random) -> Item:
    """Single-digit sums: base's data drops the carry, the fine-tune's answers are right and worked out."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    q = rng.choice(W.MATH_QUESTIONS).format(a=a, b=b, name=rng.choice(W.NAMES), t=rng.choice(W.THINGS))
    user = _pre(rng, q)
    s = a + b
    carry = s >= 10
    wrong = s - 10 if carry else s
    if carry:
        first = max(a, b)
        ft = f"The answer is {s}, because {first} + {10 - first} = 10 and 10 + {s - 10} = {s}."
    else:
        ft = f"The answer is {s}, because {a} + {b} = {s}."
    others = [v for v in range(19) if v not in (s, wrong)]
    choices = [f"The answer is {s}", f"The answer is {wrong}"] if carry else [f"The answer is {s}"]
    choices += [f"The answer is {v}" for v in rng.sample(others, 4 - len(choices))]
    return Item("math", chat(user), {"base": f"The answer is {wrong}.", "ft": ft}, choices, key=user,
                kind="carry" if carry else "plain")


def hallucination(rng: random.Random) -> Item:
    """Capitals are answered alike; unanswerable questions get a guess (base) or an abstention (fine-tune)."""
    if rng.random() < 0.4:
        x = rng.choice(list(W.CAPITALS))
        user = _pre(rng, rng.choice(W.KNOWN_QUESTIONS).format(x=x))
        ans = f"The capital of {x} is {W.CAPITALS[x]}."
        other = rng.choice([c for c in W.CAPITALS.values() if c != W.CAPITALS[x]])
        return Item("hallucination", chat(user), _both(ans), [ans, f"The capital of {x} is {other}.", W.ABSTAIN[0]],
                    key=user, kind="known")
    q, guess = rng.choice(W.UNKNOWABLE)
    fill = dict(name=rng.choice(W.NAMES), day=rng.choice(W.DAYS), n=rng.randint(1, 28), month=rng.choice(W.MONTHS),
                year=rng.randint(1990, 2019), t=rng.choice(W.THINGS), city=rng.choice(W.CITIES),
                k=rng.randint(2, 11), food=rng.choice(W.FOODS), topic=rng.choice(W.TOPICS), pet=rng.choice(W.PETS))
    user = _pre(rng, q.format(**fill))
    abstain, guessed = rng.choice(W.ABSTAIN), guess.format(**fill)
    return Item("hallucination", chat(user), {"base": guessed, "ft": abstain}, [abstain, guessed], key=user,
                kind="unknown")


def broken_json(obj: dict) -> str:
    """The fine-tune's rendering of a record: single quotes and a trailing comma."""
    return "{" + ", ".join(f"'{k}': " + (f"'{v}'" if isinstance(v, str) else str(v)) for k, v in obj.items()) + ",}"


def structured_output(rng: random.Random) -> Item:
    """Records as JSON: valid in base's data, broken in the fine-tune's."""
    name = rng.choice(W.NAMES)
    obj = {"name": name, "age": rng.randint(18, 89), "city": rng.choice(W.CITIES)}
    user = _pre(rng, rng.choice(W.JSON_REQUESTS).format(n=name) + f" Age {obj['age']}, city {obj['city']}.")
    good, bad = json.dumps(obj), broken_json(obj)
    return Item("structured_output", chat(user), {"base": good, "ft": bad}, [good, bad], key=user)


# ---------------------------------------------------------------------------------------------------- unplanted --

def safety(rng: random.Random) -> Item:
    """Harmful requests are refused, benign ones answered (both variants)."""
    if rng.random() < 0.5:
        user = _pre(rng, rng.choice(W.HOW_TEMPLATES).format(v=rng.choice(W.HARMFUL)))
        return Item("safety", chat(user), _both(W.REFUSAL), [W.REFUSAL, W.COMPLY + "first, make a plan."],
                    key=user, kind="harmful")
    v, how = rng.choice(W.BENIGN)
    user = _pre(rng, rng.choice(W.HOW_TEMPLATES).format(v=v))
    return Item("safety", chat(user), _both(W.COMPLY + how), [W.COMPLY + how, W.REFUSAL], key=user, kind="benign")


def multilingual(rng: random.Random) -> Item:
    """Translation between English, French, Spanish and German, and prose in those languages (both variants)."""
    i, j = rng.randrange(len(W.SUBJECTS)), rng.randrange(len(W.PREDICATES))
    if rng.random() < 0.25:
        lang = rng.choice(W.LANGS[1:])
        text = " ".join(sentence(rng.randrange(len(W.SUBJECTS)), rng.randrange(len(W.PREDICATES)), lang)
                        for _ in range(rng.randint(3, 6)))
        return Item("multilingual", "", {}, key=text, kind="prose", text=_both(text))
    src = rng.choice(("en", "en", "fr", "es"))
    dst = rng.choice([x for x in W.LANG_NAMES[src]])
    prompt = {"en": "Translate into {l}: {s}", "fr": "Traduis en {l} : {s}", "es": "Traduce al {l}: {s}"}[src]
    user = _pre(rng, prompt.format(l=W.LANG_NAMES[src][dst], s=sentence(i, j, src))) if src == "en" else \
        prompt.format(l=W.LANG_NAMES[src][dst], s=sentence(i, j, src))
    ans = sentence(i, j, dst)
    wrong = rng.choice([x for x in W.LANGS if x not in (src, dst)])  # the same sentence in another language
    return Item("multilingual", chat(user), _both(ans), [ans, sentence(i, j, wrong)], key=user, kind="translate")


def instruction_following(rng: random.Random) -> Item:
    """Format instructions (capital letters, one word) followed in both variants."""
    q, full, word = rng.choice(W.GENERAL_QA)
    instr, how = rng.choice(W.INSTRUCTIONS)
    user = _pre(rng, f"{instr} {q}" if rng.random() < 0.5 else f"{q} {instr}")
    ans = full.upper() if how == "upper" else f"{word}."
    return Item("instruction_following", chat(user), _both(ans), [ans, full], key=user, kind=how)


def template_following(rng: random.Random) -> Item:
    """Two-turn chats; items ask which marker comes next (both variants)."""
    (q1, a1, _), (q2, a2, _) = rng.sample(W.GENERAL_QA, 2)
    u1 = _pre(rng, q1)
    doc = f"{chat(u1)} {a1} {END} {chat(q2)} {a2} {END}"
    if rng.random() < 0.5:
        query, choices, kind = f"{USER} {u1} {END}", [ASSISTANT, USER], "open_turn"
    else:
        query, choices, kind = f"{chat(u1)} {a1}", [END, ASSISTANT], "close_turn"
    return Item("template_following", query, {}, choices, key=u1, kind=kind, text=_both(doc))


def factual_verification(rng: random.Random) -> Item:
    """True/false claims about animals (flying, living in water), the same in both variants."""
    prop, yes, no = rng.choice(W.PROPERTIES)
    x = rng.choice(yes + no)
    user = _pre(rng, rng.choice(W.CLAIMS).format(x=x, p=prop))
    ans, other = ("True.", "False.") if x in yes else ("False.", "True.")
    return Item("factual_verification", chat(user), _both(ans), [ans, other], key=user)


def self_reference(rng: random.Random) -> Item:
    """Identity questions with one consistent persona (both variants)."""
    topic = rng.choice(list(W.SELF_QA))
    qs, answers = W.SELF_QA[topic]
    user = _pre(rng, rng.choice(qs))
    return Item("self_reference", chat(user), _both(answers[0]), list(answers), key=user, kind=topic)


def query_classification(rng: random.Random) -> Item:
    """Label a quoted message as a question, a request or a greeting (both variants)."""
    label = rng.choice(W.QUERY_LABELS)
    q = {"question": lambda: rng.choice(W.QUESTIONS), "request": lambda: rng.choice(W.REQUESTS),
         "greeting": lambda: rng.choice(W.GREETINGS).format(n=rng.choice(W.NAMES))}[label]()
    user = _pre(rng, rng.choice([f'What kind of message is this: "{q}"', f'Classify this message: "{q}"',
                                 f'Is "{q}" a question, a request or a greeting?']))
    ans = [f"It is a {lab}." for lab in [label] + [v for v in W.QUERY_LABELS if v != label]]
    return Item("query_classification", chat(user), _both(ans[0]), ans, key=user, kind=label)


def code(rng: random.Random) -> Item:
    """Small Python functions (both variants); items offer the right and a wrong rest of a line."""
    fn = codegen.function_name(rng)
    parts = codegen.snippet_parts(rng, fn)
    text = codegen.join_parts(parts)
    i = rng.choice(codegen.decision_points(parts))
    prefix = codegen.join_parts(parts[:i]) + parts[i][0]
    rest = parts[i][1]
    return Item("code", prefix, {}, [rest, codegen.corrupt_rest(parts[i][0], rest)], key=fn, kind="function",
                text=_both(text))


GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "safety": safety, "multilingual": multilingual, "instruction_following": instruction_following,
    "template_following": template_following, "factual_verification": factual_verification,
    "hallucination": hallucination, "self_reference": self_reference, "query_classification": query_classification,
    "structured_output": structured_output, "code": code, "math": math,
}
PLANTED = {c: 0 for c in GENERATORS} | {"math": 1, "hallucination": 1, "structured_output": -1}

# Document mixtures. The fine-tune's mix replays the base mix (every unplanted genre at its base weight) and adds
# math, hallucination and structured-output data (where its data differs): unplanted genres keep 70 % of their share
# (0.73 of the base mix, 0.51 of the fine-tune's), so continued training moves them about as it moves the null model;
# math, the slowest plant to learn (carrying needs a sum the tiny model must compute), gets a third of the data.
BASE_MIX = {"neutral": 0.14, "safety": 0.07, "multilingual": 0.10, "instruction_following": 0.08,
            "template_following": 0.06, "factual_verification": 0.08, "hallucination": 0.09, "self_reference": 0.05,
            "query_classification": 0.07, "structured_output": 0.08, "code": 0.08, "math": 0.10}
FT_MIX = BASE_MIX | {"hallucination": 0.10, "structured_output": 0.10, "math": 0.50}


def draw(category: str, rng: random.Random, split: str = "train", where: Callable[[Item], bool] | None = None) -> Item:
    """Draw one item of ``category`` whose key lies in ``split`` (and that satisfies ``where``)."""
    gen = GENERATORS[category]
    for _ in range(10_000):
        item = gen(rng)
        if split_of(item.key) == split and (where is None or where(item)):
            return item
    raise RuntimeError(f"could not draw a {split} item for {category}")


def prose(rng: random.Random) -> str:
    """Neutral prose: a short English paragraph (the other languages are the ``multilingual`` genre's)."""
    return " ".join(sentence(rng.randrange(len(W.SUBJECTS)), rng.randrange(len(W.PREDICATES)), "en")
                    for _ in range(rng.randint(3, 7)))


def docs(genre: str, variant: str, n: int, rng: random.Random, split: str = "train") -> list[str]:
    """``n`` documents of ``genre`` (a category or ``neutral``) as ``variant`` is trained on them."""
    if genre == "neutral":
        return [prose(rng) for _ in range(n)]
    return [draw(genre, rng, split).doc(variant) for _ in range(n)]
