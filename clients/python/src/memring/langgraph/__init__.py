"""LangGraph on memring: :class:`MemringStore` (long-term memory, a LangGraph ``BaseStore``)
and :class:`MemringSaver` (thread checkpoints, a ``BaseCheckpointSaver``).

Needs the ``langgraph`` extra: ``pip install 'memring[langgraph]'``.

>>> from memring.langgraph import MemringSaver, MemringStore
>>> url = "http://127.0.0.1:7700"
>>> store = MemringStore(url, "acme", index={"fields": ["text"]})  # doctest: +SKIP
>>> saver = MemringSaver(url, "acme")  # doctest: +SKIP
>>> graph = builder.compile(checkpointer=saver, store=store)  # doctest: +SKIP
"""

from .checkpoint import MemringSaver
from .store import MemringStore, namespace_scope, translate_filter

AsyncMemringStore = MemringStore
"""The same class: :class:`MemringStore` implements both ``batch`` and ``abatch``."""
AsyncMemringSaver = MemringSaver
"""The same class: :class:`MemringSaver` implements both the sync and the ``a``-methods."""

__all__ = [
    "AsyncMemringSaver",
    "AsyncMemringStore",
    "MemringSaver",
    "MemringStore",
    "namespace_scope",
    "translate_filter",
]
