"""Does a chat model call tools when it should? The held-out tool-use conversations of a synthetic set
(``openllm finetune --make-data``, or a quickstart's ``OUT/data/conversations/val.jsonl``) are asked through a real
``openllm serve`` on loopback with the official ``openai`` client, greedy, each with the functions it offers:

- ``tool_choice: "auto"``: does the model call when the reference reply calls, and answer in text when the
  reference answers without the tool? When it calls, is it the reference's function, with its arguments?
- ``tool_choice: "required"``: the grammar forces a call; are the arguments the reference's?

    python benchmarks/tool_use.py runs/quickstart/chat_run --base runs/quickstart/run \\
        --data runs/quickstart/data/conversations/val.jsonl

Every call is well-formed by construction (the grammar); this measures whether it is the right one.
"""

from __future__ import annotations

import argparse
import json


def ask(client, name: str, conv: dict, choice: str) -> tuple[str | None, dict | None]:
    """The first call the model makes for the conversation's first question: (function, arguments) or (None,
    None) for a text reply."""
    first = next(i for i, m in enumerate(conv["messages"]) if m["role"] == "assistant")
    r = client.chat.completions.create(
        model=name,
        messages=conv["messages"][:first],
        tools=conv["tools"],
        tool_choice=choice,
        temperature=0,
        max_tokens=64,
        parallel_tool_calls=False,
    )
    calls = r.choices[0].message.tool_calls
    if not calls:
        return None, None
    return calls[0].function.name, json.loads(calls[0].function.arguments)


def score(model: str, convs: list[dict]) -> dict:
    from openai import OpenAI

    import openllm
    from openllm.serve import ServerThread, create_app

    lm = openllm.load(model)
    out = {"calls_when_due": 0, "due": 0, "text_when_not": 0, "not_due": 0, "right_name": 0, "right_args": 0}
    out["required_right_args"] = 0
    with ServerThread(create_app(lm.model, lm.tokenizer, model_name="m")) as server:
        with OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120) as client:
            for conv in convs:
                first = next(m for m in conv["messages"] if m["role"] == "assistant")
                want = (first.get("tool_calls") or [None])[0]
                name, args = ask(client, "m", conv, "auto")
                if want is None:
                    out["not_due"] += 1
                    out["text_when_not"] += name is None
                    continue
                out["due"] += 1
                out["calls_when_due"] += name is not None
                want_name, want_args = want["function"]["name"], json.loads(want["function"]["arguments"])
                out["right_name"] += name == want_name
                out["right_args"] += name == want_name and args == want_args
                forced = {"type": "function", "function": {"name": want_name}}
                out["required_right_args"] += ask(client, "m", conv, forced)[1] == want_args  # type: ignore[arg-type]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--base", help="the base model, scored the same way for comparison")
    ap.add_argument("--data", required=True, help="a conversation set's val.jsonl")
    ap.add_argument("--limit", type=int, default=60, help="tool-use conversations to ask (default 60)")
    args = ap.parse_args()
    with open(args.data, encoding="utf-8") as f:
        convs = [c for c in map(json.loads, f) if c.get("tools")][: args.limit]
    rows = [("fine-tuned", score(args.model, convs))]
    if args.base:
        rows.append(("base", score(args.base, convs)))
    print(f"{len(convs)} held-out tool-use conversations from {args.data}")
    print(
        "| model | auto: calls when the reference calls | auto: text when it does not | right function | "
        "right function and arguments | named tool_choice: right arguments |"
    )
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        due = r["due"]
        print(
            f"| {label} | {r['calls_when_due']}/{due} | {r['text_when_not']}/{r['not_due']} | {r['right_name']}/{due} "
            f"| {r['right_args']}/{due} | {r['required_right_args']}/{due} |"
        )


if __name__ == "__main__":
    main()
