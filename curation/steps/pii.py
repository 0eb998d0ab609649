"""PII redaction: replace e-mail addresses, IP addresses and phone numbers by typed placeholders.

Rejects nothing; rewrites `text`, writes `pii_redactions` (int32, matches replaced per document) and
counts documents modified (`modified`) and matches per type (`redacted:email`, `redacted:ip_address`,
`redacted:phone`). datatrove's PIIFormatter (used for FineWeb) handles e-mails and IPs; phone numbers
are our addition. Placeholders are typed (`<EMAIL>`, `<IP_ADDRESS>`, `<PHONE>`) rather than fake
values so that a model never learns invented addresses and the redaction stays visible.

What is matched, and the known trade-offs (regexes favour precision on prose and code over recall):

* E-mail: ASCII `local@domain.tld`: local part of 1-64 of `A-Za-z0-9._%+-` starting with a letter
  or digit, dot-separated domain labels, a 2-24 letter TLD. Every repetition is bounded or split on a
  character the next token cannot start with, so there is no catastrophic backtracking. Missed:
  internationalised addresses, quoted local parts, obfuscations (`name at example dot com`), hosts
  without a TLD (`root@localhost`). Matched although not personal: role addresses (`info@...`),
  SSH-style `git@github.com`, and file names shaped like addresses (`icon@2x.png`).
* IPv4: four dotted octets 0-255 without leading zeros, not touching a letter, digit, `.` or `-` on
  either side, so `v1.2.3.4`, `1.2.3.4.5`, and parts of longer dotted numbers are left alone, and
  not right after `version`, `release`, `section`, `§`, `chapter`, `table`, `figure`, `step`, ... A
  bare `1.2.3.4` is indistinguishable from an IP and is redacted (so is a four-part version number
  in a list, as in distutils' docs: `2.7.2.2`), and so are private, loopback and documentation
  addresses (`127.0.0.1`, `192.168.0.1`); datatrove by default redacts public addresses only.
* IPv6: a run of hex groups and colons that `ipaddress.IPv6Address` accepts (full, `::`-compressed,
  and with an embedded IPv4 tail such as `::ffff:192.0.2.1`). To spare code (`x[1::2]`, `a::b`) and
  clock times (`12:30:45`), a `::`-compressed form needs a 4-digit group (`fe80::1`,
  `2001:db8::1`), so `::1` is not redacted. Zone ids (`%eth0`) and prefix lengths are left in place.
* Phone: North-American `(555) 010-1234`, `555-010-1234`, `555.010.1234` (the two separators the
  same), `1-800-555-0199` and `+1 555 010 1234`; international `+44 20 7946 0958` style: `+`, a
  1-3 digit country code and groups split by spaces, dots or hyphens (an optional `(0)` or
  parenthesised area code), or compact E.164 `+442079460958`, 8-15 digits in all. A 7-digit local
  number (`555-0123`) only counts after a cue (`call`, `tel.`, `phone:`, `fax`, `mobile`, `cell`,
  `contact`). Never matched: years, dates (`2024-01-15`), times, digit runs without a `+`, section
  numbers (`1.2.3`), prices, ISBNs (`978-0-306-40615-7`, `0-306-40615-2`). Missed: national forms
  without `+` outside North America (`020 7946 0958`), numbers spelled with letters or extensions.
"""

from __future__ import annotations

import ipaddress
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.steps.base import Step, StepOutput, StepParams, set_column, split
from curation.steps.registry import register

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9A-Fa-f]"

# Each pattern opens with a lookahead on its first character, which lets `re` skip ahead to the
# positions where a match can start instead of trying the lookbehind at every character.
EMAIL = (r"(?=[A-Za-z0-9])(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"
         r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9])")
IPV4 = rf"(?=\d)(?<![\w.-]){_IPV4}(?![\w-]|\.\d)"
IPV6 = rf"(?=[0-9A-Fa-f:])(?<![\w:.]){_H}{{0,4}}(?::{_H}{{0,4}}){{2,7}}(?:(?<=:){_IPV4})?(?![\w:@]|\.\d)"
PHONE = r"(?=[+(\d])(?<![\w+(.-])(?:" + "|".join((
    # North American: (555) 010-1234 / 555-010-1234 / 555.010.1234 / 1-800-555-0199 / +1 555 010 1234
    r"(?:\+1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}",
    r"(?:\+1[ .-]?|1-)?\d{3}(?P<s>[.-])\d{3}(?P=s)\d{4}",
    # International (+1 too): +CC then separated groups, optionally a `(0)` or parenthesised area code
    # first, or compact E.164; the digit count (8-15) is checked on the match.
    r"\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,8}|[ .-]\d{1,8})(?:[ .-]\d{1,8}){0,5}",
    r"\+[1-9]\d{7,14}",
)) + r")(?![\w-]|[.-]\d)"
# A local 7-digit number needs a cue in front; group `cue` is kept, only the number is replaced.
PHONE_LOCAL = (r"(?=[CcTtPpFfMm])(?P<cue>\b(?:[Cc]all(?: me)?(?: at| on)?|[Tt]el\.?|[Tt]elephone:?|[Pp]hone:?|"
               r"[Ff]ax:?|[Mm]obile:?|[Cc]ell:?|[Cc]ontact(?: me)?(?: at| on)?)\s{1,3})(?P<local>\d{3}-\d{4})"
               r"(?![\w-]|[.-]\d)")

# A dotted quad right after one of these words is a version or section number, not an address.
_NUMBERING_CUE = re.compile(r"(?:\b(?:version|release|build|section|sect?\.|chapter|ch\.|clause|paragraph|para\.|"
                            r"figure|fig\.|table|rule|step|item|v)|§)\s{0,3}$", re.IGNORECASE)

# The detectors, in the order they are tried at one position (e-mails first, so that an address's
# domain is never half-redacted as something else): (name, counted as, pattern, prefilter). The
# prefilter is an RE2 pattern (run by Arrow over the whole batch) that every match contains, so a
# document goes through a detector's Python regex only when its prefilter found a candidate there.
_DETECTORS = (
    ("email", "email", rf"(?P<email>{EMAIL})", r"@[A-Za-z0-9]"),
    ("ipv6", "ip_address", rf"(?P<ipv6>{IPV6})", r":[0-9A-Fa-f]{0,4}:"),
    ("ipv4", "ip_address", rf"(?P<ipv4>{IPV4})", r"\d\.\d{1,3}\.\d{1,3}\.\d"),
    ("phone", "phone", rf"(?P<phone>{PHONE})|{PHONE_LOCAL}",
     r"\(\d{3}\)|\d{3}[.-]\d{3}[.-]\d{4}|\+[1-9]\d{0,2}[ .(-]|\+[1-9]\d{7}|\d{3}-\d{4}"),
)


class PIIRedactorParams(StepParams):
    emails: bool = True
    ip_addresses: bool = True
    phone_numbers: bool = True
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP_ADDRESS>"
    phone_placeholder: str = "<PHONE>"


def _valid_ipv6(candidate: str) -> bool:
    if "::" in candidate and not re.search(r"[0-9A-Fa-f]{4}", candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _phone_digits_ok(candidate: str) -> bool:
    return 8 <= sum(ch.isdigit() for ch in candidate) <= 15


@register
class PIIRedactor(Step[PIIRedactorParams]):
    name = "pii_redact"

    def __init__(self, params: PIIRedactorParams | None = None, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        on = {"email": p.emails, "ip_address": p.ip_addresses, "phone": p.phone_numbers}
        self._types = [kind for kind, enabled in on.items() if enabled]
        self._detectors = [d for d in _DETECTORS if on[d[1]]]
        self._placeholders = {"email": p.email_placeholder, "ip_address": p.ip_placeholder,
                              "phone": p.phone_placeholder}
        self._compiled: dict[tuple[str, ...], re.Pattern[str]] = {}

    def _regex(self, detectors: tuple[str, ...]) -> re.Pattern[str]:
        """One alternation of the given detectors, so a document is scanned once."""
        regex = self._compiled.get(detectors)
        if regex is None:
            regex = re.compile("|".join(pattern for name, _, pattern, _ in self._detectors if name in detectors))
            self._compiled[detectors] = regex
        return regex

    def redact(self, text: str, detectors: tuple[str, ...] | None = None) -> tuple[str, dict[str, int]]:
        """The text with PII replaced, and the number of replacements per type."""
        counts = dict.fromkeys(self._types, 0)
        if detectors is None:
            detectors = tuple(name for name, *_ in self._detectors)
        if not detectors:
            return text, counts
        placeholders = self._placeholders

        def replace(m: re.Match[str]) -> str:
            kind = m.lastgroup
            found = m.group()
            if kind == "ipv6":
                if not _valid_ipv6(found):
                    # Not an address, but the span may still hold one (`::192.0.2.1`) or an e-mail's start.
                    rest = tuple(d for d in detectors if d != "ipv6")
                    return self._regex(rest).sub(replace, found) if rest else found
                kind = "ip_address"
            elif kind == "ipv4":
                if _NUMBERING_CUE.search(m.string, max(0, m.start() - 16), m.start()):
                    return found
                kind = "ip_address"
            elif kind == "phone" and found.startswith("+") and not _phone_digits_ok(found):
                return found
            elif kind == "local":
                counts["phone"] += 1
                return m.group("cue") + placeholders["phone"]
            counts[kind] += 1  # type: ignore[index]
            return placeholders[kind]  # type: ignore[index]

        return self._regex(detectors).sub(replace, text), counts

    def apply(self, batch: pa.Table) -> StepOutput:
        n = batch.num_rows
        per_doc = np.zeros(n, np.int32)
        totals = dict.fromkeys(self._types, 0)
        text = batch.column("text")
        if self._detectors and n:
            hits = {name: np.asarray(pc.fill_null(pc.match_substring_regex(text, prefilter), False))
                    for name, _, _, prefilter in self._detectors}
            candidates = np.flatnonzero(np.logical_or.reduce(list(hits.values())))
            if len(candidates):
                before = text.take(pa.array(candidates)).to_pylist()
                after: list[str] = []
                for row, doc in zip(candidates, before):
                    new, counts = self.redact(doc, tuple(name for name in hits if hits[name][row]))
                    after.append(new)
                    per_doc[row] = sum(counts.values())
                    for kind, k in counts.items():
                        totals[kind] += k
                changed = per_doc[candidates] > 0
                if changed.any():
                    mask = np.zeros(n, bool)
                    mask[candidates[changed]] = True
                    replacements = pa.array([a for a, c in zip(after, changed) if c], text.type)
                    batch = set_column(batch, "text", pc.replace_with_mask(text, pa.array(mask), replacements))
        batch = set_column(batch, "pii_redactions", pa.array(per_doc, pa.int32()))
        out = split(batch, pa.nulls(n, pa.string()))
        out.counters["modified"] = int(np.count_nonzero(per_doc))
        out.counters.update({f"redacted:{kind}": k for kind, k in totals.items()})
        return out
