"""Search the stored embeddings by text or example image (`search`), and the vector index."""

from core.search.filters import BadFilter, parse_where
from core.search.query import SearchError, search

__all__ = ["BadFilter", "SearchError", "parse_where", "search"]
