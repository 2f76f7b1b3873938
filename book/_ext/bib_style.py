"""An author-year bibliography: the reference list labelled as the text cites.

The chapters cite author-year ({cite:t}`ho2020denoising` reads "Ho et al. (2020)",
``bibtex_reference_style: author_year``), but pybtex's styles label the list itself
[1], [2], ... This extension registers the pybtex formatting style ``authoryear``
(``bibtex_default_style: authoryear`` in ``book/_config.yml``): pybtex's ``plain``
style (entries sorted by author, year and title), with each entry labelled as it is
cited, "Ho et al., 2020", and "2021a", "2021b" where one label would name two entries.
It also registers the referencing style ``author_year_round``
(``bibtex_reference_style``): sphinxcontrib-bibtex's author-year citations with round
brackets, "Ho et al. (2020)" and "(Ho et al., 2020)", as papers print them, instead of
square ones.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from string import ascii_lowercase

from pybtex.plugin import register_plugin
from sphinxcontrib.bibtex.plugin import register_plugin as register_bibtex_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle


def _last_name(person) -> str:
    """A person's last name as plain text (braces and LaTeX accents decoded)."""
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


def author_year(entry) -> str:
    """ "Ho et al., 2020": one or two last names, or the first and "et al.", then the year."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(p) for p in persons]
    if not names:
        who = Text.from_latex(entry.fields.get("title", entry.key)).render_as("text")
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year(e) for e in entries]
        total, seen = Counter(labels), Counter()
        for label in labels:
            if total[label] > 1:                      # two entries, one label: 2021a, 2021b
                suffix = ascii_lowercase[seen[label]]
                seen[label] += 1
                label += suffix
            yield label


class AuthorYearStyle(PlainStyle):
    default_label_style = AuthorYearLabels


def _round() -> BracketStyle:
    return BracketStyle(left="(", right=")")


@dataclasses.dataclass
class RoundAuthorYearReferences(AuthorYearReferenceStyle):
    bracket_parenthetical: BracketStyle = dataclasses.field(default_factory=_round)
    bracket_textual: BracketStyle = dataclasses.field(default_factory=_round)
    bracket_author: BracketStyle = dataclasses.field(default_factory=_round)
    bracket_label: BracketStyle = dataclasses.field(default_factory=_round)
    bracket_year: BracketStyle = dataclasses.field(default_factory=_round)


def setup(app):
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    register_bibtex_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round", RoundAuthorYearReferences)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
