"""The ``tldr-synthetic`` generator: invented TL;DR-shaped posts that a tiny model can learn.

Each post comes from one of eight scenarios and states concrete facts (a name, an age, a
relation, a city, a duration, an amount of money). Its reference summary is faithful and
concise: it repeats three to five of those facts, is 10-20 words long and ends with a period.
Each post also has a comparison pair: ``chosen`` is another faithful summary; ``rejected`` is
one of three defects, in equal shares:

- ``wrong_fact``: the chosen summary with one or two facts swapped for values that do not
  occur in the post: in half the swaps a value no post ever contains (``OUTSIDE``: a cue a
  tiny model learns from token statistics), in the other half another name, city or number of
  the corpus (only a model that checks the post tells it apart);
- ``ramble``: 30-60 generic, repetitive words without any fact of the post;
- ``cut_off``: the chosen summary cut mid-sentence, with no final period.

The signal is local: facts in a good summary also appear in the prompt, good summaries have a
length band and end with ``.``. Vocabulary: about 300 distinct words.

Deterministic: the corpus depends only on ``seed``. Splits are disjoint by construction: a post
belongs to the split chosen by a CRC32 hash of its text (80% train, 10% valid, 10% test), so a
held-out post never appears in another split, whatever ``num_examples`` is.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rlhf_builtins.tldr.views import (
    COMPARISON_VIEWS,
    Compared,
    Post,
    PromptRenderer,
    Summarized,
    to_dataset,
    view_columns,
)

SPLITS = ("train", "valid", "test")
DEFECTS = ("wrong_fact", "ramble", "cut_off")
_BUCKETS = 20
_SPLIT_BUCKETS = {"train": range(0, 16), "valid": range(16, 18), "test": range(18, 20)}

NAMES = (
    "Maya",
    "Jake",
    "Lena",
    "Omar",
    "Nina",
    "Sam",
    "Rosa",
    "Theo",
    "Kira",
    "Ben",
    "Ava",
    "Leo",
    "Zoe",
    "Max",
    "Ivy",
    "Dan",
)
PLACES = (
    "Denver",
    "Austin",
    "Boston",
    "Portland",
    "Chicago",
    "Seattle",
    "Miami",
    "Dallas",
    "Phoenix",
    "Atlanta",
    "Detroit",
    "Tampa",
)
UNITS = ("weeks", "months", "years")
AGES = range(18, 60)
DURATION_COUNTS = range(2, 12)
AMOUNTS = range(50, 1000, 50)
OUTSIDE = {
    "name": ("Greg", "Hank", "Olga", "Pete", "Ruth", "Walt"),
    "place": ("Reno", "Boise", "Tulsa", "Fresno"),
    "money": tuple(str(n) for n in range(1100, 3000, 300)),
    "age": tuple(str(n) for n in range(61, 80, 3)),
    "duration": tuple(f"{n} days" for n in range(2, 12)),
}
"""Fact values that no post ever contains: half of the ``wrong_fact`` swaps use one of them."""


@dataclass(frozen=True)
class Scenario:
    subreddit: str
    relations: tuple[str, ...]
    title: str
    body: tuple[str, ...]
    summaries: tuple[str, ...]
    """Faithful summary templates; ``{slot}`` fields are facts of the post."""


SCENARIOS = (
    Scenario(
        "relationships",
        ("boyfriend", "girlfriend", "partner"),
        "My {relation} ({age}) wants to move to {place} without me",
        (
            "My {relation} {name} is {age} and we have been together for {duration}.",
            "Last week {name} got a job offer in {place}.",
            "The job pays ${money} more per month than what {name} makes now.",
            "{name} wants to go alone first and see if it works.",
        ),
        (
            "My {relation} {name} ({age}) of {duration} wants to move to {place} alone for a job.",
            "{name}, my {relation} of {duration}, got a job in {place} and wants to move without me.",
        ),
    ),
    Scenario(
        "personalfinance",
        ("roommate", "brother", "sister", "friend", "coworker"),
        "Lent my {relation} ${money} and they will not pay me back",
        (
            "I am {age} and I live in {place}.",
            "About {duration} ago I lent my {relation} {name} ${money} for rent.",
            "{name} promised to pay it back in two weeks.",
            "Now {name} ignores my texts and just bought a new phone.",
        ),
        (
            "Lent my {relation} {name} ${money} {duration} ago and {name} will not pay it back.",
            "My {relation} {name} owes me ${money} from {duration} ago and ignores me.",
        ),
    ),
    Scenario(
        "legaladvice",
        ("landlord",),
        "Landlord in {place} kept my ${money} deposit",
        (
            "I rented an apartment in {place} for {duration}.",
            "When I moved out my {relation} {name} kept my ${money} deposit.",
            "The place was clean and I have photos of every room.",
            "{name} says the carpet was damaged but it was old when I moved in.",
        ),
        (
            "My {relation} {name} in {place} kept my ${money} deposit after {duration}.",
            "Rented in {place} for {duration} and {name} will not return my ${money} deposit.",
        ),
    ),
    Scenario(
        "jobs",
        ("boss", "manager"),
        "My {relation} ({age}) wants me to work weekends for no extra pay",
        (
            "I have worked at a small shop in {place} for {duration}.",
            "My {relation} {name} is {age} and just told me I have to work every weekend.",
            "{name} will not pay me more for it.",
            "I make ${money} a week and I already work long hours.",
        ),
        (
            "My {relation} {name} ({age}) at a shop in {place} wants me to work weekends for free.",
            "After {duration} at a shop in {place}, my {relation} {name} wants free weekend work.",
        ),
    ),
    Scenario(
        "dogs",
        ("neighbor", "roommate", "friend"),
        "My {relation} keeps feeding my dog",
        (
            "I am {age} and I have had my dog for {duration}.",
            "My {relation} {name} in {place} keeps giving him food over the fence.",
            "The vet says he is now too heavy and the visit cost me ${money}.",
            "I asked {name} to stop but {name} just laughs.",
        ),
        (
            "My {relation} {name} keeps feeding my dog and the vet visit cost me ${money}.",
            "{name}, my {relation} in {place}, feeds my dog and now he is too heavy.",
        ),
    ),
    Scenario(
        "travel",
        ("friend", "sister", "brother", "cousin"),
        "My {relation} cancelled our trip to {place} the day before",
        (
            "My {relation} {name} and I planned a trip to {place} for {duration}.",
            "We each paid ${money} for the hotel.",
            "The day before we left {name} cancelled and said work was too busy.",
            "Now the hotel will not give the money back and {name} says it is not a big deal.",
        ),
        (
            "My {relation} {name} cancelled our {place} trip the day before and I lost ${money}.",
            "{name}, my {relation}, cancelled our trip to {place} after {duration} of planning.",
        ),
    ),
    Scenario(
        "running",
        ("dad", "mom", "brother", "sister", "friend"),
        "I am {age} and my {relation} says I am too old to start running",
        (
            "I am {age} and I started running {duration} ago.",
            "I now run every morning in a park in {place}.",
            "My {relation} {name} says I am too old and will hurt my knees.",
            "I just paid ${money} for good shoes and I feel great.",
        ),
        (
            "I ({age}) started running {duration} ago but my {relation} {name} says I am too old.",
            "Started running in {place} at {age} and my {relation} {name} thinks I am too old.",
        ),
    ),
    Scenario(
        "roommates",
        ("roommate",),
        "My {relation} never cleans the kitchen",
        (
            "I share a flat in {place} with my {relation} {name}, who is {age}.",
            "For {duration} {name} has not washed a single dish.",
            "I pay ${money} in rent, the same as {name}.",
            "When I bring it up {name} says I am too picky.",
        ),
        (
            "My {relation} {name} ({age}) in {place} has not cleaned the kitchen in {duration}.",
            "My {relation} {name} has left every dish to me for {duration} and says I am too picky.",
        ),
    ),
)

FILLERS = (
    "I do not know what to do.",
    "Any advice is welcome.",
    "Am I wrong here?",
    "This has been stressing me out.",
    "I do not want to start a fight.",
    "What should I do?",
    "Thanks for reading.",
)

RAMBLE = (
    "so basically there is a lot going on",
    "and I do not really know what to think",
    "it is a long story",
    "and things have been really hard lately",
    "and I feel like nobody gets it",
    "but it is what it is",
    "and I keep thinking about it",
    "and it is hard to explain",
    "so yeah",
    "and stuff like that",
    "you know what I mean",
    "and it is really hard",
)


@dataclass(frozen=True)
class SyntheticPost:
    """One generated example: the post, its reference, a comparison pair and its defect."""

    post: Post
    reference: str
    chosen: str
    rejected: str
    defect: str

    def summarized(self) -> Summarized:
        return Summarized(self.post, self.reference)

    def compared(self) -> Compared:
        return Compared(self.post, self.chosen, self.rejected)


def _facts(rng: random.Random, scenario: Scenario) -> dict[str, str]:
    return {
        "name": rng.choice(NAMES),
        "age": str(rng.choice(AGES)),
        "relation": rng.choice(scenario.relations),
        "place": rng.choice(PLACES),
        "duration": f"{rng.choice(DURATION_COUNTS)} {rng.choice(UNITS)}",
        "money": str(rng.choice(AMOUNTS)),
    }


def _other_value(rng: random.Random, slot: str, facts: dict[str, str], text: str) -> str:
    """A value for ``slot`` that does not occur in the post: half the time one that no post
    ever contains (a token-level cue), else another value of the corpus (only checking the
    post tells it apart)."""
    if rng.random() < 0.5:
        return rng.choice(OUTSIDE[slot])
    while True:
        value = _facts(rng, SCENARIOS[0])[slot]
        if value != facts[slot] and value not in text:
            return value


def _wrong_fact(rng: random.Random, template: str, facts: dict[str, str], post_text: str) -> str:
    slots = [s for s in ("name", "place", "money", "duration", "age") if "{" + s + "}" in template]
    wrong = dict(facts)
    for slot in rng.sample(slots, k=min(len(slots), rng.choice((1, 2)))):
        wrong[slot] = _other_value(rng, slot, facts, post_text)
    return template.format(**wrong)


def _ramble(rng: random.Random, facts: dict[str, str]) -> str:
    words: list[str] = [f"so my {facts['relation']}"]
    while sum(len(p.split()) for p in words) < rng.randint(30, 60):
        words.append(rng.choice(RAMBLE))
    return " ".join(words) + rng.choice((".", "", " and"))


def _cut_off(rng: random.Random, summary: str) -> str:
    words = summary.rstrip(".").split()
    keep = max(5, round(len(words) * rng.uniform(0.35, 0.7)))
    return " ".join(words[:keep]).rstrip(",;")


def draw_post(rng: random.Random) -> tuple[Scenario, dict[str, str], Post]:
    """Draw a scenario, its facts and the post that states them."""
    scenario = rng.choice(SCENARIOS)
    facts = _facts(rng, scenario)
    sentences = [s.format(**facts) for s in scenario.body]
    for filler in rng.sample(FILLERS, k=rng.choice((0, 1, 2))):
        sentences.insert(rng.randint(1, len(sentences)), filler)
    post = Post(scenario.subreddit, scenario.title.format(**facts), " ".join(sentences))
    return scenario, facts, post


def summarize(
    rng: random.Random, scenario: Scenario, facts: dict[str, str], post: Post
) -> SyntheticPost:
    """Draw the reference summary and the comparison pair of a drawn post."""
    reference = rng.choice(scenario.summaries).format(**facts)
    template = rng.choice(scenario.summaries)
    chosen = template.format(**facts)
    defect = rng.choice(DEFECTS)
    if defect == "wrong_fact":
        rejected = _wrong_fact(rng, template, facts, f"{post.title} {post.body}")
    elif defect == "ramble":
        rejected = _ramble(rng, facts)
    else:
        rejected = _cut_off(rng, chosen)
    return SyntheticPost(post, reference, chosen, rejected, defect)


def split_of(post: Post) -> str:
    """The split a post belongs to, from a stable hash of its text."""
    bucket = zlib.crc32(post.head().encode()) % _BUCKETS
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def generate(split: str, num_examples: int, seed: int = 0) -> Iterator[SyntheticPost]:
    """``num_examples`` distinct posts of ``split``, the same ones for the same ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < num_examples:
        scenario, facts, post = draw_post(rng)
        head = post.head()
        if head in seen or split_of(post) != split:
            continue
        seen.add(head)
        yield summarize(rng, scenario, facts, post)


def synthetic_dataset(view: str, split: str, num_examples: int, seed: int = 0) -> Any:
    """The ``datasets.Dataset`` of ``view`` over ``generate(split, num_examples, seed)``."""
    items = list(generate(split, num_examples, seed))
    records = [i.compared() if view in COMPARISON_VIEWS else i.summarized() for i in items]
    return to_dataset(view_columns(records, view, PromptRenderer()), "tldr-synthetic")
