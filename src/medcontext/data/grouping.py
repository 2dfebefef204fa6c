"""Group keys of cases: which cases belong together and must stay on one side of a split.

Several volumes of one subject (ACDC's end-diastole and end-systole frames of a patient,
longitudinal scans, left and right halves) are not independent: putting one in training and
the other in the test set leaks the subject. A *group rule* maps every case id to a group key;
:func:`~medcontext.data.make_split` then keeps each group whole in test and validation and
draws few-shot training cases from distinct groups.

Rules (a dataset preset sets one, ``data.group_by`` overrides it):

- ``"regex:PATTERN"``: the first match of ``PATTERN`` in the case id (its first capture group
  when it has one), e.g. ``"regex:patient\\d+"`` turns ``acdc_patient001_frame12`` into
  ``patient001``. A case id without a match is an error.
- ``"metadata:COLUMN"``: column ``COLUMN`` of ``case_metadata.csv`` in the dataset folder
  (one row per case, a ``case_id`` column). A case without a row is an error.
- ``"none"`` (or ``None``): every case is its own group.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

__all__ = ["GroupRuleError", "METADATA_FILE", "case_groups", "check_group_rule"]

#: per-case metadata table read by ``metadata:COLUMN`` rules, in the dataset folder
METADATA_FILE = "case_metadata.csv"


class GroupRuleError(ValueError):
    """A group rule that cannot be read or applied (the message names the rule and the case)."""


def check_group_rule(rule: str | None) -> str | None:
    """The rule in canonical form (``None`` for no grouping).

    Raises:
        GroupRuleError: unknown form or a regular expression that does not compile.
    """
    if rule is None or rule == "none":
        return None
    if not isinstance(rule, str) or ":" not in rule:
        raise GroupRuleError(
            f"group rule {rule!r}: expected 'regex:PATTERN', 'metadata:COLUMN' or 'none'"
        )
    kind, _, arg = rule.partition(":")
    if kind not in ("regex", "metadata") or not arg:
        raise GroupRuleError(f"group rule {rule!r}: expected 'regex:PATTERN', 'metadata:COLUMN' or 'none'")
    if kind == "regex":
        try:
            re.compile(arg)
        except re.error as err:
            raise GroupRuleError(f"group rule {rule!r}: the regular expression does not compile ({err})") from err
    return rule


def case_groups(case_ids: Sequence[str], rule: str | None, root: str | Path | None = None) -> dict[str, str] | None:
    """Group key of every case under ``rule``; ``None`` when the rule is ``None``/``"none"``.

    Args:
        case_ids: the cases to group.
        rule: see the module docstring.
        root: dataset folder (where ``case_metadata.csv`` is), for ``metadata:`` rules.

    Raises:
        GroupRuleError: a case without a key, a missing metadata file or column.
    """
    rule = check_group_rule(rule)
    if rule is None:
        return None
    kind, _, arg = rule.partition(":")
    if kind == "regex":
        pattern = re.compile(arg)
        groups = {}
        for cid in case_ids:
            match = pattern.search(cid)
            if match is None:
                raise GroupRuleError(
                    f"group rule {rule!r}: case id {cid!r} has no match, so it has no group; set data.group_by "
                    "to a rule that fits the case ids ('regex:PATTERN', 'metadata:COLUMN' of case_metadata.csv) "
                    "or to 'none' to split cases independently"
                )
            groups[cid] = match.group(1) if pattern.groups else match.group(0)
        return groups
    return _groups_from_metadata(case_ids, arg, rule, root)


def _groups_from_metadata(case_ids: Sequence[str], column: str, rule: str, root: str | Path | None) -> dict[str, str]:
    if root is None:
        raise GroupRuleError(f"group rule {rule!r} needs the dataset folder (for {METADATA_FILE})")
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        raise GroupRuleError(f"group rule {rule!r}: {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "case_id" not in fields or column not in fields:
                raise GroupRuleError(f"group rule {rule!r}: {path} needs columns 'case_id' and {column!r}; it has {fields}")
            table = {row["case_id"]: row[column] for row in reader}
    except UnicodeDecodeError as err:
        raise GroupRuleError(
            f"group rule {rule!r}: {path} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset "
            f"{err.start}); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    missing = [cid for cid in case_ids if not table.get(cid)]
    if missing:
        raise GroupRuleError(
            f"group rule {rule!r}: {path} gives no {column!r} for {len(missing)} case(s), e.g. {missing[:3]}"
        )
    return {cid: table[cid] for cid in case_ids}
