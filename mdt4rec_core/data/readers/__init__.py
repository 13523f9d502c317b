"""Readers for the raw formats of every supported dataset; each yields RawRows, typed by ``parse_rows``."""

from mdt4rec_core.data.readers.canonical import ParsedRows, parse_rows
from mdt4rec_core.data.readers.formats import FORMATS, FormatSpec
from mdt4rec_core.data.readers.raw import RawRows

__all__ = ["FORMATS", "FormatSpec", "ParsedRows", "RawRows", "parse_rows"]
