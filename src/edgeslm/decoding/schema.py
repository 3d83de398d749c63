"""JSON Schema support for grammar-constrained extraction: the public names, in one place.

The work is done by modules with one job each:

* :mod:`~edgeslm.decoding.normalize`: a schema as plain JSON (input limits), JSON pointers, and
  the validator of the original schema (:func:`make_validator`);
* :mod:`~edgeslm.decoding.narrow`: which keywords hold subschemas, and the narrowing walker
  (``tighten``, ``cap``);
* :mod:`~edgeslm.decoding._regex`: the regex dialect (patterns read as Python's ``re`` reads
  them) and time-limited regex validation;
* :mod:`~edgeslm.decoding.shortest`: the shortest valid value of a schema;
* :mod:`~edgeslm.decoding.support`: :func:`check_schema`: exact / relaxed / refused, the
  relaxation and compile search, the reading of llguidance's errors, the time limit;
* :mod:`~edgeslm.decoding.grammar`: :func:`grammar_for`, the (cached) llguidance grammar.

Limits re-exported here are read where they are defined: to change one, set it there
(``edgeslm.decoding.support.CHECK_TIME_LIMIT_S``), not here.
"""

from __future__ import annotations

from ._regex import python_pattern, python_patterns
from .grammar import grammar_for
from .normalize import MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH, make_validator, normalize_schema
from .support import CHECK_TIME_LIMIT_S, GRAMMAR_OPTIONS, MAX_MIN_CHARS, SchemaSupport, check_schema

__all__ = [
    "CHECK_TIME_LIMIT_S",
    "GRAMMAR_OPTIONS",
    "MAX_MIN_CHARS",
    "MAX_SCHEMA_CHARS",
    "MAX_SCHEMA_DEPTH",
    "SchemaSupport",
    "check_schema",
    "grammar_for",
    "make_validator",
    "normalize_schema",
    "python_pattern",
    "python_patterns",
]
