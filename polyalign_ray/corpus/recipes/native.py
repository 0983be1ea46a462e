"""Reading the fields of a dataset's native row, with quarantine-ready errors.

Published datasets come in two shapes for the same content: the Hugging Face ``Sequence`` of dicts is stored as a
dict of equal-length lists (``{"text": [...], "answer_start": [...]}``), while the authors' JSON files hold a list
of dicts. :meth:`NativeRow.records` accepts both, so one recipe reads a ``save_to_disk`` copy, the Hub's Parquet
and the original JSON alike. Every accessor raises :class:`~polyalign_ray.corpus.adapters.Rejected` naming the
dataset and the field, so a file given to the wrong ``--source`` is quarantined row by row with a clear reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from polyalign_ray.corpus.adapters import Rejected


@dataclasses.dataclass(frozen=True)
class NativeRow:
    """One row (or one nested item of a row) of a source dataset, with the dataset's name for error details."""

    dataset: str
    fields: Mapping[str, Any]

    def has(self, key: str) -> bool:
        """Whether ``key`` is present and not null."""
        return self.fields.get(key) is not None

    def text(self, key: str) -> str:
        """A required string field; ``missing_field`` when absent or null, ``bad_field_type`` when not a string."""
        if not self.has(key):
            raise Rejected(
                "missing_field",
                f"{self.dataset}: the row has no {key!r}; keys seen: {sorted(self.fields)[:12]} "
                "(is this file really that dataset?)",
            )
        return self.optional_text(key)

    def optional_text(self, key: str) -> str:
        """A string field that may be absent or null (then ``""``); numbers are accepted as ids are."""
        value = self.fields.get(key)
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise Rejected(
                "bad_field_type", f"{self.dataset}: {key!r} must be a string, got {type(value).__name__}"
            )
        return str(value)

    def texts(self, key: str) -> list[str]:
        """A list of strings (absent or null: empty)."""
        value = self.fields.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Rejected("bad_field_type", f"{self.dataset}: {key!r} must be a list of strings")
        return list(value)

    def records(self, key: str) -> list[NativeRow]:
        """A list of sub-records, given either as a list of dicts or as a dict of equal-length lists (the
        Hugging Face ``Sequence`` of dicts); absent or null: empty."""
        value = self.fields.get(key)
        if value is None:
            return []
        if isinstance(value, Mapping):
            columns = {name: column for name, column in value.items() if column is not None}
            if not all(isinstance(column, list) for column in columns.values()):
                raise Rejected("bad_field_type", f"{self.dataset}: {key!r} must hold lists, one per field")
            lengths = {len(column) for column in columns.values()}
            if len(lengths) > 1:
                raise Rejected("bad_field_type", f"{self.dataset}: the lists of {key!r} differ in length")
            count = lengths.pop() if lengths else 0
            return [
                NativeRow(self.dataset, {name: column[i] for name, column in columns.items()})
                for i in range(count)
            ]
        if isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
            return [NativeRow(self.dataset, item) for item in value]
        raise Rejected(
            "bad_field_type",
            f"{self.dataset}: {key!r} must be a list of objects or an object of lists, got {type(value).__name__}",
        )


def text_key(text: str) -> str:
    """A short stable key of a text, for group keys of datasets without ids (a story, a passage, a dialogue)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()
