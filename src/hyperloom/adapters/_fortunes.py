"""Debian's fortunes as a multi-task text classification set: which category is a fortune from."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")

# One line per category, written for this set (the files' own names are one word).
DESCRIPTIONS: dict[str, str] = {
    "computers": "jokes about computers, programmers, software and hackers",
    "drugs": "quotes about drugs, alcohol, smoking and getting high",
    "education": "remarks about schools, teachers, students and learning",
    "food": "jokes and quotes about food, cooking, eating and drinking",
    "kids": "things children say and jokes about kids and parents",
    "law": "quips about laws, lawyers, judges, courts and legal rules",
    "linux": "quotes from the Linux community about the kernel, distributions and free software",
    "literature": "quotes about books, writers, reading and literature",
    "love": "sayings about love, romance, marriage and relationships",
    "men-women": "remarks about men, women and the battle of the sexes",
    "politics": "quotes about politicians, government, voting and power",
    "science": "sayings about science, scientists, mathematics and physics",
    "songs-poems": "verses, poems, rhymes and song lyrics",
    "sports": "jokes and quotes about sports, athletes, teams and games",
    "startrek": "lines spoken by characters of the television series Star Trek",
    "work": "complaints and jokes about jobs, bosses, meetings and the office",
    "zippy": "surreal non sequiturs spoken by Zippy the Pinhead, a comic strip character",
}


@dataclass(frozen=True)
class Category:
    """One fortunes file as a class: its name, description and fortunes (train/valid/test)."""

    name: str
    description: str
    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]


def read_fortunes(name: str, folder: str | os.PathLike = FORTUNES) -> list[str]:
    """The fortunes of one file of Debian's ``fortunes`` package (``%``-separated), stripped.

    Args:
        name: the file name (``"computers"``, ``"food"``, ...).
        folder: where the files are.

    Returns:
        The non-empty fortunes, in file order.

    Raises:
        ValueError: the folder or the file is missing (install Debian's ``fortunes``).

    Example:
        >>> len(read_fortunes("food")) > 100  # doctest: +SKIP
        True
    """
    path = Path(folder) / name
    if not Path(folder).is_dir():
        raise ValueError(f"{str(folder)!r} not found: apt-get install fortunes")
    if not path.is_file():
        names = sorted(p.name for p in Path(folder).iterdir() if not p.suffix)
        raise ValueError(f"no fortunes file {name!r} in {str(folder)!r}; it has {names}")
    raw = path.read_text(encoding="utf-8", errors="replace")
    return [" ".join(d.split()) for d in raw.split("\n%\n") if d.strip() and d.strip() != "%"]


def load_categories(
    names: tuple[str, ...],
    *,
    per_split: tuple[int, int, int] = (120, 40, 40),
    seed: int = 0,
    folder: str | os.PathLike = FORTUNES,
) -> list[Category]:
    """Read categories and split each one's fortunes at random into train, valid and test.

    Args:
        names: category (file) names; each needs a description in :data:`DESCRIPTIONS`.
        per_split: fortunes per category in train, valid and test (drawn without replacement).
        seed: the draw's seed.
        folder: where the files are.

    Returns:
        One :class:`Category` per name, in order.

    Raises:
        ValueError: an unknown or repeated name, or a file with fewer fortunes than asked for.

    Example:
        >>> cats = load_categories(("food", "law"), per_split=(10, 5, 5))  # doctest: +SKIP
        >>> len(cats[0].train)  # doctest: +SKIP
        10
    """
    if len(set(names)) != len(names):
        raise ValueError(f"categories must be distinct, got {names}")
    unknown = [n for n in names if n not in DESCRIPTIONS]
    if unknown:
        raise ValueError(f"no description for categories {unknown}; known: {sorted(DESCRIPTIONS)}")
    need = sum(per_split)
    out = []
    for i, name in enumerate(names):
        docs = sorted(set(read_fortunes(name, folder)))
        if len(docs) < need:
            raise ValueError(f"category {name!r} has {len(docs)} distinct fortunes, {need} asked")
        random.Random(seed * 1000 + i).shuffle(docs)
        a, b, _ = per_split
        out.append(
            Category(
                name,
                DESCRIPTIONS[name],
                tuple(docs[:a]),
                tuple(docs[a : a + b]),
                tuple(docs[a + b : need]),
            )
        )
    return out


def task_description(a: Category, b: Category) -> str:
    """The one-line description of the task "is this fortune from ``a`` or from ``b``"."""
    return f"Which is this fortune: {a.description}, or {b.description}?"
