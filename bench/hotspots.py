"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) as Markdown hot spots.

    python bench/hotspots.py profile.raw [--top 20] [--title "..."]

Only the event loop's thread counts (stacks from other threads, such as aiosqlite's worker
waiting on its queue, are left out: py-spy reports some of those waits as busy). Shares are
of the loop thread's samples; time spent in C (uvloop, sockets, parsers) is charged to the
nearest Python frame, so ``Runner.run`` "self" time is mostly uvloop's own work.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::\d+)?\)$")
_TRIM = re.compile(r".*/(?:site-packages|src|python3\.\d+)/")
_OURS = "chatgpt_proxy/"
_ENTRY = ("chatgpt_proxy/cli.py", "chatgpt_proxy/server.py")  # start-up frames: always ~100%


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame or "?"
    return f"{match['function']} ({_TRIM.sub('', match['path'])})"


def summarise(text: str, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    own: Counter[str] = Counter()
    total_in: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        names = [_name(frame) for frame in stack.split(";")]
        if names[0].startswith("Thread._bootstrap"):
            continue  # not the event loop's thread
        samples = int(count)
        total += samples
        own[names[-1]] += samples
        for name in set(names):
            total_in[name] += samples
    ours = [
        (name, n)
        for name, n in total_in.most_common()
        if _OURS in name and not any(entry in name for entry in _ENTRY)
    ][:top]
    return total, own.most_common(top), ours


def render(path: Path, top: int, title: str) -> str:
    total, own, ours = summarise(path.read_text(), top)
    if not total:
        return f"## {title}\n\nNo samples of the event loop's thread.\n"
    out = [
        f"## {title}",
        "",
        f"{total} samples of the event loop's thread. *self*: time in the function itself "
        "(C code it calls included); *inclusive*: time in it and everything it calls.",
        "",
        "| self % | function (self) | | inclusive % | chatgpt_proxy function (inclusive) |",
        "|---:|---|---|---:|---|",
    ]
    for index in range(max(len(own), len(ours))):
        left = own[index] if index < len(own) else None
        right = ours[index] if index < len(ours) else None
        out.append(
            "| "
            + (f"{100 * left[1] / total:.1f} | `{left[0]}`" if left else " | ")
            + " | | "
            + (f"{100 * right[1] / total:.1f} | `{right[0]}`" if right else " | ")
            + " |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/hotspots.py", description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--title", default="Hot spots (py-spy)")
    args = parser.parse_args(argv)
    print(render(args.raw, args.top, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
