"""One process of the two-process LangGraph test (test_langgraph_graph.py).

``python _langgraph_worker.py URL API_KEY TENANT THREAD MODE``: a StateGraph whose plain
Python nodes read and write a :class:`MemringStore` and are checkpointed by a
:class:`MemringSaver`, both on the router at ``URL``. ``MODE`` ``first`` starts the thread and
stops inside node ``c2`` (it prints ``WAITING`` and sleeps until killed); ``resume`` continues
the thread from its last checkpoint and prints ``NEXT <json>`` and ``DONE <json>``.
"""

from __future__ import annotations

import json
import operator
import sys
import time
from typing import Annotated, Any, TypedDict

from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph

from memring.langgraph import MemringSaver, MemringStore


class State(TypedDict):
    log: Annotated[list[str], operator.add]
    seen: str


def main(url: str, key: str, tenant: str, thread: str, mode: str) -> None:
    def bump(name: str) -> None:
        store = get_store()
        item = store.get(("runs",), name)
        runs = (item.value["n"] if item else 0) + 1
        store.put(("runs",), name, {"n": runs, "by": [*(item.value["by"] if item else []), mode]})

    def a(state: State) -> dict[str, Any]:
        bump("a")
        get_store().put(("notes",), "from-a", {"text": f"written by {mode}"})
        return {"log": ["a"]}

    def b(state: State) -> dict[str, Any]:
        bump("b")
        return {"log": ["b"]}

    def c1(state: State) -> dict[str, Any]:
        bump("c1")
        return {"log": ["c1"]}

    def c2(state: State) -> dict[str, Any]:
        if mode == "first":
            print("WAITING", flush=True)
            time.sleep(3600)
        bump("c2")
        return {"log": ["c2"]}

    def d(state: State) -> dict[str, Any]:
        bump("d")
        note = get_store().get(("notes",), "from-a")
        return {"log": ["d"], "seen": note.value["text"] if note else ""}

    builder = StateGraph(State)
    for name, fn in [("a", a), ("b", b), ("c1", c1), ("c2", c2), ("d", d)]:
        builder.add_node(name, fn)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c1")
    builder.add_edge("b", "c2")
    builder.add_edge(["c1", "c2"], "d")
    builder.add_edge("d", END)
    with (
        MemringStore(url, tenant, api_key=key) as store,
        MemringSaver(url, tenant, api_key=key) as saver,
    ):
        graph = builder.compile(checkpointer=saver, store=store)
        config: Any = {"configurable": {"thread_id": thread}}
        if mode == "first":
            graph.invoke({"log": [], "seen": ""}, config, durability="sync")
            return
        print("NEXT " + json.dumps(list(graph.get_state(config).next)), flush=True)
        result = graph.invoke(None, config, durability="sync")
        print("DONE " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
