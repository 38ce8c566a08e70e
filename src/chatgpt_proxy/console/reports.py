"""The upstreams, usage, moderation and audit pages."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from aiohttp import web

from chatgpt_proxy.console.guard import Refused, Signed, protect
from chatgpt_proxy.console.render import base_path, change, page, render, see_other
from chatgpt_proxy.keystore.usage_queries import REPORT_GROUPS
from chatgpt_proxy.state import STATE

AUDIT_PAGE = 50


@page
async def upstreams(request: web.Request, signed: Signed) -> web.StreamResponse:
    state = request.app[STATE]
    today = datetime.now(UTC).date()
    served = await state.store.usage.report(today, today, "upstream")
    by_alias = {row["group"]: row for row in served}
    rows = [
        {"upstream": upstream.name, "status": status, "served": by_alias.get(status.alias)}
        for upstream in state.router.upstreams
        for status in upstream.pool.snapshot()
    ]
    return render(request, "upstreams.html", {"rows": rows}, signed=signed)


@change
async def readmit(request: web.Request, signed: Signed, form: dict[str, str]) -> web.StreamResponse:
    state = request.app[STATE]
    alias = request.match_info["alias"]
    for upstream in state.router.upstreams:
        key = upstream.pool.by_alias(alias)
        if key is not None:
            upstream.pool.readmit(key)
            await state.store.audit.record(
                signed.actor, "upstream.readmit", target=alias, address=request.remote
            )
            return see_other(f"{base_path(request)}/console/upstreams")
    raise Refused(404, "No upstream key has that alias.")


def _period(request: web.Request) -> tuple[date, date, str]:
    today = datetime.now(UTC).date()
    try:
        since = date.fromisoformat(request.query.get("since") or str(today - timedelta(days=6)))
        until = date.fromisoformat(request.query.get("until") or str(today))
    except ValueError as exc:
        raise Refused(400, "Dates look like 2026-11-30.") from exc
    if until < since:
        raise Refused(400, "The period ends before it starts.")
    by = request.query.get("by", "day")
    if by not in REPORT_GROUPS:
        raise Refused(400, f"Group by one of {', '.join(REPORT_GROUPS)}.")
    return since, until, by


async def _report(request: web.Request) -> tuple[date, date, str, list[dict[str, object]]]:
    since, until, by = _period(request)
    rows = await request.app[STATE].store.usage.report(since, until, by)
    return since, until, by, rows


@page
async def usage(request: web.Request, signed: Signed) -> web.StreamResponse:
    since, until, by, rows = await _report(request)
    tokens = {str(row["group"]): _int(row["total_tokens"]) for row in rows}
    labels = list(tokens)
    if by == "day" and (until - since).days < 400:  # every day of the period, used or not
        labels = [str(since + timedelta(days=n)) for n in range((until - since).days + 1)]
    context = {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "by": by,
        "groups": REPORT_GROUPS,
        "rows": rows,
        "chart": {"labels": labels, "tokens": [tokens.get(label, 0) for label in labels]},
    }
    return render(request, "usage.html", context, signed=signed)


@page
async def usage_csv(request: web.Request, signed: Signed) -> web.StreamResponse:
    since, until, by, rows = await _report(request)
    out = io.StringIO()
    columns = ["group", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        # A spreadsheet would run a model name starting with =, +, - or @ as a formula.
        group = str(row["group"])
        writer.writerow({**row, "group": "'" + group if group[:1] in "=+-@" else group})
    name = f"usage-{by}-{since}-{until}.csv"
    response = web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
    protect(response)
    return response


@page
async def moderation(request: web.Request, signed: Signed) -> web.StreamResponse:
    moderator = request.app[STATE].moderator
    blocks = moderator.recent_blocks(200)
    counts: dict[str, int] = {}
    for block in blocks:
        for reason in block.get("reasons") or ["-"]:
            counts[str(reason)] = counts.get(str(reason), 0) + 1
    context = {
        "blocks": blocks,
        "total": moderator.blocks_total,
        "counts": sorted(counts.items(), key=lambda item: -item[1]),
    }
    return render(request, "moderation.html", context, signed=signed)


@page
async def audit(request: web.Request, signed: Signed) -> web.StreamResponse:
    before_text = request.query.get("before")
    before = (
        int(before_text)
        if before_text and before_text.isdigit() and len(before_text) < 19
        else None
    )
    entries = await request.app[STATE].store.audit.page(limit=AUDIT_PAGE, before=before)
    older = entries[-1].id if len(entries) == AUDIT_PAGE else None
    context = {"entries": entries, "older": older}
    return render(request, "audit.html", context, signed=signed)


def _int(value: object) -> int:
    """A sum the database returned (an int, a Decimal on PostgreSQL, or None for no rows)."""
    return int(value) if isinstance(value, int | float | Decimal | str) else 0
