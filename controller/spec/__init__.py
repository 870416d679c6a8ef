"""Typed specs (pydantic, frozen) and their parsing. No I/O besides reading the document given."""
