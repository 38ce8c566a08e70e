"""Fuzz a running chatgpt-proxy with many odd requests and count what comes back.

Starts the fake OpenAI upstream of the test suite (in this process) and a real
``chatgpt-proxy serve`` in front of it (its own process, its own SQLite key store in a temporary
directory), then sends hypothesis-generated requests of each input class (``body``, ``header``,
``path``, ``method``, ``multipart``: see ``tests/fuzzing.py``) as raw bytes over sockets::

    .venv/bin/python bench/fuzz.py                       # 4,000 examples per class
    .venv/bin/python bench/fuzz.py --examples 200 --kinds header,method --show 5

Prints counts by outcome (status and error code, or the protocol failure) for each class, the
first few failing requests of each failing outcome, and whether the proxy still served
``/healthz`` at the end. Exit
status 1 when any answer broke the property (a 500, a redirect, a non-envelope error, no
answer), 2 when the proxy stopped serving. Loopback only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]
import lib  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from fake_openai import FAKE_KEYS, FakeOpenAI  # noqa: E402
from fuzzing import (  # noqa: E402
    KINDS,
    Credentials,
    Outcome,
    Probe,
    probes,
    send,
    unthrottled,
)
from servers import BackgroundLoop, is_serving  # noqa: E402

ADMIN_KEY = "admin-key-for-the-fuzzer-0123456789"
CGP = Path(sys.executable).with_name("chatgpt-proxy")


class Tally:
    """Outcomes by input class, and the first few requests behind each failing outcome."""

    def __init__(self, show: int) -> None:
        self.show = show
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.examples: dict[str, list[tuple[Probe, Outcome]]] = collections.defaultdict(list)
        # What is odd in the requests behind each failing outcome, to point at the cause.
        self.tags: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    def add(self, probe: Probe, outcome: Outcome) -> None:
        self.counts[probe.kind][outcome.label] += 1
        if outcome.ok:
            return
        self.tags[outcome.label].update(probe.tags)
        if len(self.examples[outcome.label]) < self.show:
            self.examples[outcome.label].append((probe, outcome))

    def failures(self) -> int:
        return sum(len(v) for v in self.examples.values())

    def render(self) -> str:
        lines = []
        total: collections.Counter[str] = collections.Counter()
        for kind, counter in self.counts.items():
            total.update(counter)
            lines.append(f"\n{kind}: {sum(counter.values())} requests")
            lines += [f"  {n:7d}  {label}" for label, n in counter.most_common()]
        bad = {label for label in self.examples}
        lines.append(
            f"\nall classes: {sum(total.values())} requests, "
            f"{sum(total[label] for label in bad)} broke the property"
        )
        for label, found in sorted(self.examples.items()):
            lines.append(f"\n== {label}: {total[label]} answers")
            common = ", ".join(f"{tag} ({n})" for tag, n in self.tags[label].most_common(6))
            lines.append(f"  most common in them: {common}")
            lines.append(f"  the first {len(found)}:")
            for probe, outcome in found:
                lines.append("  " + probe.describe().replace("\n", "\n  "))
                if outcome.detail:
                    lines.append(f"    answer: {outcome.detail[:200]!r}")
        return "\n".join(lines)


def explore(
    host: str,
    port: int,
    credentials: Credentials,
    kind: str,
    examples: int,
    tally: Tally,
    start: int,
) -> None:
    @seed(start)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(probe=probes(credentials, kind))
    def one(probe: Probe) -> None:
        tally.add(probe, send(host, port, probe))

    one()


def proxy_config(tmp: Path, upstream: str, **sections: dict[str, object]) -> tuple[Path, str, str]:
    """A config for ``chatgpt-proxy serve`` in front of the fake upstream, with its SQLite store
    in ``tmp`` (``sections`` add to the config's sections): its path, the proxy's URL and a
    client key."""
    (port,) = lib.free_ports(1)
    config = tmp / "proxy.yaml"
    data = json.loads(
        lib.proxy_conf(
            port=port,
            upstream=upstream,
            db=f"sqlite:///{tmp}/fuzz.db",
            access_log=False,
            moderation_on=False,
            redis=None,
        )
    )
    data["upstreams"][0]["keys"] = list(FAKE_KEYS[:2])  # keys the fake accepts
    data["auth"] = {"admin_key": ADMIN_KEY}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    config.write_text(json.dumps(data, indent=2))  # JSON is YAML
    key = lib.create_key(CGP, config, "fuzz")
    return config, f"http://127.0.0.1:{port}", key


@contextlib.contextmanager
def proxy_running(
    tmp: Path, upstream: str, **sections: dict[str, object]
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """``chatgpt-proxy serve`` with ``proxy_config``'s config, its log in ``tmp``: the process,
    its URL and a client key; stopped on leaving."""
    config, url, key = proxy_config(tmp, upstream, **sections)
    serve = [str(CGP), "serve", "--config", str(config)]
    with lib.running(serve, log=tmp / "proxy.log") as process:
        yield process, url, key


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=4000, help="examples per input class")
    parser.add_argument("--kinds", default=",".join(KINDS), help="input classes, comma-separated")
    parser.add_argument("--show", type=int, default=3, help="failing requests shown per outcome")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    parser.add_argument(
        "--moderation", action="store_true", help="moderate inputs and outputs (the fake's)"
    )
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown classes {sorted(unknown)}; choose from {', '.join(KINDS)}")

    # The fake upstream's own tracebacks (a body it cannot read) are not the proxy's answers.
    logging.getLogger().setLevel(logging.CRITICAL)
    tmp = Path(tempfile.mkdtemp(prefix="cgp-fuzz-"))
    loop = BackgroundLoop("fuzz-fake-upstream")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stack.callback(loop.close)
        fake = FakeOpenAI()
        fake.url = loop.start_app(fake.app)
        sections = unthrottled()
        if args.moderation:
            sections["moderation"] = {"enabled": True, "check_output": True}
        process, url, key = stack.enter_context(proxy_running(tmp, fake.base_url, **sections))
        if lib.wait(url + "/healthz", 30.0):
            print((tmp / "proxy.log").read_text(errors="replace")[-2000:], file=sys.stderr)
            return 2
        credentials = Credentials(client_key=key, admin_key=ADMIN_KEY)
        tally = Tally(args.show)
        port = int(url.rsplit(":", 1)[1])
        began = time.monotonic()
        for number, kind in enumerate(kinds):
            kind_began = time.monotonic()
            explore("127.0.0.1", port, credentials, kind, args.examples, tally, args.seed + number)
            done = sum(tally.counts[kind].values())
            print(
                f"{kind}: {done} requests in {time.monotonic() - kind_began:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        serving = is_serving(url) and process.poll() is None
        print(tally.render())
        print(
            f"\n{time.monotonic() - began:.0f} s; the proxy "
            f"{'still serves /healthz' if serving else 'STOPPED SERVING'}"
        )
        print(f"upstream requests the fake saw: {len(fake.requests)}")
        if not serving:
            return 2
        return 1 if tally.failures() else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
