#!/usr/bin/env bash
# chatgpt-proxy throughput / latency / memory benchmark. See bench/README.md.
#
#   bench/run.sh                      # the standard run (a few minutes)
#   BENCH_DURATION=30 bench/run.sh    # longer runs
#   BENCH_REDIS=1 BENCH_MODERATION=1 bench/run.sh
#
# Environment:
#   BENCH_DURATION     seconds per measured wrk run (10)
#   BENCH_WARMUP       seconds of the warm-up run before each measured one (2)
#   BENCH_CONNECTIONS  wrk connections (50)
#   BENCH_REDIS=1      add a run with redis_url and a key with rpm/tpm limits
#   BENCH_REDIS_URL    the Redis for that run (redis://127.0.0.1:6379/0)
#   BENCH_MODERATION=1 add runs with moderation on: same prompt (cache hits), new prompts (misses)
#   BENCH_FIRST_CHUNK=0  skip bench/first_chunk.py (time to first chunk)
#   BENCH_SERVER_CPU / BENCH_LOAD_CPU   cores of the measured server / of upstream + wrk (0 / 1)
#   BENCH_PYSPY=1      profile the non-streaming chatgpt-proxy run with py-spy (hot spots in the report)
#   BENCH_PYSPY_BIN    py-spy to use (default: py-spy on PATH, then .venv/bin/py-spy)
#   BENCH_KEEP_TMP=1   keep the temporary directory (configs, logs, raw wrk output)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNECTIONS:-50}"
REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}"
SERVER_CPU="${BENCH_SERVER_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]}"
        apt-get install -y "${missing[@]}" >/dev/null || {
            apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null
        }
    else
        die "missing ${missing[*]}: install them (Debian/Ubuntu: sudo apt-get install -y wrk nginx-light) and rerun"
    fi
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ "$(nproc)" -ge 2 ] || say "WARNING: fewer than 2 cores: the server and the load generator share one"

cd "$ROOT"
if [ ! -x .venv/bin/chatgpt-proxy ]; then
    say "creating .venv"
    [ -d .venv ] || python3 -m venv .venv
    .venv/bin/pip install -q -e '.[dev]'
fi
PY="$ROOT/.venv/bin/python"
PYSPY=""
if [ "${BENCH_PYSPY:-0}" != 0 ]; then
    for candidate in "${BENCH_PYSPY_BIN:-}" "$(command -v py-spy || true)" "$ROOT/.venv/bin/py-spy"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then PYSPY="$candidate"; break; fi
    done
    [ -n "$PYSPY" ] || die "BENCH_PYSPY=1 needs py-spy: .venv/bin/pip install py-spy (or BENCH_PYSPY_BIN=/path/to/py-spy)"
fi
CGP="$ROOT/.venv/bin/chatgpt-proxy"
LIB=("$PY" "$HERE/lib.py")

# --- temporary directory, processes, cleanup ---------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/chatgpt-proxy-bench.XXXXXX")"
chmod 755 "$TMP"   # nginx workers run as nobody when started as root
mkdir -p "$TMP/wrk"
PIDS=()

stop_pid() {  # stop_pid PID: TERM, wait up to 10 s, then KILL
    local pid="$1" n=0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then
        echo "bench: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {  # drop PID from PIDS once it is stopped
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# run_fg CMD...: run CMD as if in the foreground, but killable: bash runs an INT/TERM trap only
# once a foreground command ends (and not at all if that command handled the signal, as wrk
# does), while `wait` returns at once.
run_fg() {
    "$@" &
    local pid=$! rc=0
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return $rc
}

rss_of() { "${LIB[@]}" rss "$1"; }             # "VmRSS_kB VmHWM_kB"
worker_of() { "${LIB[@]}" children "$1" | awk '{print $1}'; }

start_nginx() {  # start_nginx NAME CPU: runs nginx -c $TMP/NAME.conf; sets NGINX_PID
    local name="$1" cpu="$2"
    "$NGINX" -t -q -p "$TMP" -e "$TMP/$name.error.log" -c "$TMP/$name.conf" \
        || die "nginx config $name is invalid (see $TMP/$name.conf)"
    taskset -c "$cpu" "$NGINX" -p "$TMP" -e "$TMP/$name.error.log" -c "$TMP/$name.conf" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

PROXY_PID=""
start_proxy() {  # start_proxy NAME CONFIG: sets PROXY_PID, 1 if it does not come up
    local name="$1" config="$2" port
    port="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["server"]["port"])' "$config")"
    taskset -c "$SERVER_CPU" "$CGP" serve --config "$config" >"$TMP/proxy-$name.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    if ! "${LIB[@]}" wait "http://127.0.0.1:$port/healthz" --timeout 30; then
        tail -n 30 "$TMP/proxy-$name.log" >&2
        return 1
    fi
}

stop_proxy() {
    [ -n "$PROXY_PID" ] || return 0
    stop_pid "$PROXY_PID"
    forget_pid "$PROXY_PID"
    PROXY_PID=""
}

RUNS="$TMP/runs.tsv"
printf 'id\tgroup\tkind\tlabel\trss_kb\thwm_kb\tcpu_s\tnote\n' >"$RUNS"

# bench ID GROUP KIND LABEL URL KEY BODYFLAGS MEMPID NOTE: warm-up, measured run, RSS
bench() {
    local id="$1" group="$2" kind="$3" label="$4" url="$5" key="$6" bodyflags="$7" mempid="$8"
    local note="${9:-}" body mem cpu0 cpu1
    # shellcheck disable=SC2086
    body="$("${LIB[@]}" body $bodyflags)"
    say "$label ($group): ${WARMUP}s warm-up + ${DURATION}s"
    BENCH_BODY="$body" BENCH_KEY="$key" BENCH_SALT="warm$RANDOM" \
        run_fg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$HERE/post.lua" "$url" >/dev/null
    cpu0="$("${LIB[@]}" cputime "$mempid")"
    BENCH_BODY="$body" BENCH_KEY="$key" BENCH_SALT="run$RANDOM" \
        run_fg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$HERE/post.lua" \
        "$url" >"$TMP/wrk/$id.txt"
    cpu1="$("${LIB[@]}" cputime "$mempid")"
    mem="$(rss_of "$mempid")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$group" "$kind" "$label" \
        "${mem% *}" "${mem#* }" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}')" \
        "$note" >>"$RUNS"
    grep -E 'Requests/sec|Non-2xx|Socket errors' "$TMP/wrk/$id.txt" >&2 || true
    if [ -n "$PYSPY" ] && [ "$id" = json-proxy-logoff ]; then
        profile "$url" "$key" "$body" "$mempid"
    fi
}

# profile URL KEY BODY PID: one more run, not in the table (py-spy pauses the process to sample)
profile() {
    local seconds=$((DURATION > 4 ? DURATION - 2 : 2)) spy
    say "profiling one more run with py-spy (${seconds}s, 100 Hz; not counted in the table)"
    BENCH_BODY="$3" BENCH_KEY="$2" BENCH_SALT="prof$RANDOM" \
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$HERE/post.lua" "$1" \
        >"$TMP/wrk-profile.txt" &
    local load=$!
    PIDS+=("$load")
    sleep 1
    taskset -c "$LOAD_CPU" "$PYSPY" record -r 100 -d "$seconds" -f raw -o "$TMP/profile.raw" \
        --pid "$4" >"$TMP/py-spy.log" 2>&1 &
    spy=$!
    PIDS+=("$spy")
    wait "$load" || true
    forget_pid "$load"
    local spied=0
    wait "$spy" || spied=$?
    forget_pid "$spy"
    if [ $spied = 0 ] && [ -s "$TMP/profile.raw" ]; then
        "$PY" "$HERE/hotspots.py" "$TMP/profile.raw" \
            --title "Hot spots: chatgpt-proxy, non-streaming, access_log off (py-spy, 100 Hz)" \
            >"$TMP/hotspots.md"
    else
        echo "py-spy failed: $(tail -n 3 "$TMP/py-spy.log")" >&2
    fi
}

unavailable() {  # unavailable ID GROUP KIND LABEL NOTE
    printf '%s\t%s\t%s\t%s\t\t\t\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RUNS"
    say "$4 ($2): not available: $5"
}

# --- machine -----------------------------------------------------------------------------
META="$TMP/meta.txt"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: nproc=$(nproc), CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "versions: $("${LIB[@]}" versions), $("$NGINX" -v 2>&1 | sed 's/nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')"
    if git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
        echo "source: git $(git -C "$ROOT" rev-parse --short HEAD), $(git -C "$ROOT" status --porcelain -- src | wc -l) changed file(s) under src/"
    fi
    echo "settings: wrk -t1 -c$CONNS -d${DURATION}s after a ${WARMUP}s warm-up; server on core $SERVER_CPU, upstream nginx + wrk on core $LOAD_CPU"
} >"$META"
cat "$META" >&2

# --- fake upstream (nginx) and the reference proxy (nginx proxy_pass) ----------------------
read -r UP_JSON UP_SSE NGX_JSON NGX_SSE PROXY_PORT <<<"$("${LIB[@]}" ports 5)"
"${LIB[@]}" upstream-conf "$TMP" "$UP_JSON" "$UP_SSE"
"${LIB[@]}" nginx-proxy-conf "$TMP" "$NGX_JSON" "$UP_JSON" "$NGX_SSE" "$UP_SSE"
start_nginx upstream "$LOAD_CPU"
UPSTREAM_PID=$NGINX_PID
start_nginx nginxproxy "$SERVER_CPU"
NGXPROXY_PID=$NGINX_PID
for port in "$UP_JSON" "$UP_SSE" "$NGX_JSON" "$NGX_SSE"; do
    "${LIB[@]}" wait "http://127.0.0.1:$port/v1/models" --timeout 10 || die "nginx on $port did not start"
done
UPSTREAM_WORKER="$(worker_of "$UPSTREAM_PID")"
NGXPROXY_WORKER="$(worker_of "$NGXPROXY_PID")"

# --- chatgpt-proxy: key store and client keys --------------------------------------------
DB="sqlite:///$TMP/bench.db"
proxy_config() {  # proxy_config FILE UPSTREAM_PORT [lib.py proxy-conf flags...]
    local file="$1" up="$2"
    shift 2
    "${LIB[@]}" proxy-conf "$file" --port "$PROXY_PORT" --upstream "http://127.0.0.1:$up/v1" \
        --db "$DB" "$@"
}
proxy_config "$TMP/keys.yaml" "$UP_JSON"
KEY="$("$CGP" keys create --name bench --config "$TMP/keys.yaml" | tail -n 1)"
[ -n "$KEY" ] || die "could not create a client key"

CHAT=/v1/chat/completions
for group in json sse; do
    if [ $group = json ]; then up=$UP_JSON ngx=$NGX_JSON flags=""; else up=$UP_SSE ngx=$NGX_SSE flags="--stream"; fi
    # shellcheck disable=SC2086
    "${LIB[@]}" probe "http://127.0.0.1:$up$CHAT" $flags || die "the fake upstream answers wrongly"
    # shellcheck disable=SC2086
    "${LIB[@]}" probe "http://127.0.0.1:$ngx$CHAT" $flags || die "nginx proxy_pass answers wrongly"

    bench "$group-direct" $group direct "direct (wrk → upstream nginx)" \
        "http://127.0.0.1:$up$CHAT" "" "$flags" "$UPSTREAM_WORKER"
    bench "$group-nginx" $group nginx "nginx proxy_pass" \
        "http://127.0.0.1:$ngx$CHAT" "" "$flags" "$NGXPROXY_WORKER"

    label="bare aiohttp pass-through (the stack's floor)"
    taskset -c "$SERVER_CPU" "$PY" "$HERE/passthrough.py" --port "$PROXY_PORT" \
        --upstream "http://127.0.0.1:$up" >"$TMP/passthrough-$group.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    # shellcheck disable=SC2086
    if "${LIB[@]}" wait "http://127.0.0.1:$PROXY_PORT/healthz" --timeout 30 \
        && "${LIB[@]}" probe "http://127.0.0.1:$PROXY_PORT$CHAT" $flags; then
        bench "$group-floor" $group floor "$label" "http://127.0.0.1:$PROXY_PORT$CHAT" "" \
            "$flags" "$PROXY_PID"
    else
        unavailable "$group-floor" $group floor "$label" "it did not start or answer"
    fi
    stop_proxy

    for log in off on; do
        logflag=""; [ $log = on ] && logflag="--access-log"
        proxy_config "$TMP/proxy-$group-log$log.yaml" "$up" $logflag
        id="$group-proxy-log$log"
        label="chatgpt-proxy, access_log $log"
        if start_proxy "$id" "$TMP/proxy-$group-log$log.yaml" \
            && "${LIB[@]}" probe "http://127.0.0.1:$PROXY_PORT$CHAT" --key "$KEY" $flags; then
            bench "$id" $group proxy "$label" "http://127.0.0.1:$PROXY_PORT$CHAT" "$KEY" \
                "$flags" "$PROXY_PID"
        else
            unavailable "$id" $group proxy "$label" "the proxy did not start or answer (see its log)"
        fi
        stop_proxy
    done
done

# --- optional: limits with Redis ---------------------------------------------------------
if [ "${BENCH_REDIS:-0}" = 1 ]; then
    id=json-proxy-redis label="chatgpt-proxy, Redis limits (rpm+tpm key)"
    if ! "$PY" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()' \
        "$REDIS_URL" 2>/dev/null; then
        unavailable $id json proxy "$label" "no Redis answers at $REDIS_URL"
    else
        proxy_config "$TMP/proxy-redis.yaml" "$UP_JSON" --redis "$REDIS_URL"
        LIMITED_KEY="$("$CGP" keys create --name bench-limited --rpm 100000000 --tpm 100000000000 \
            --config "$TMP/proxy-redis.yaml" | tail -n 1)"
        PROBE_KEY="$("$CGP" keys create --name bench-rpm1 --rpm 1 \
            --config "$TMP/proxy-redis.yaml" | tail -n 1)"
        if start_proxy redis "$TMP/proxy-redis.yaml" \
            && "${LIB[@]}" probe "http://127.0.0.1:$PROXY_PORT$CHAT" --key "$LIMITED_KEY"; then
            note=""
            if ! enforced="$("${LIB[@]}" limits-probe "http://127.0.0.1:$PROXY_PORT$CHAT" --key "$PROBE_KEY")"; then
                note="limits NOT enforced by this build (an rpm=1 key was never refused): not yet a limits number"
            fi
            echo "$enforced" >&2
            bench $id json proxy "$label" "http://127.0.0.1:$PROXY_PORT$CHAT" "$LIMITED_KEY" "" \
                "$PROXY_PID" "$note"
        else
            unavailable $id json proxy "$label" "the proxy did not start or answer with redis_url set"
        fi
        stop_proxy
    fi
fi

# --- optional: moderation on (cache hits, then cache misses) -----------------------------
if [ "${BENCH_MODERATION:-0}" = 1 ]; then
    proxy_config "$TMP/proxy-moderation.yaml" "$UP_JSON" --moderation
    if start_proxy moderation "$TMP/proxy-moderation.yaml" \
        && "${LIB[@]}" probe "http://127.0.0.1:$PROXY_PORT$CHAT" --key "$KEY"; then
        bench json-proxy-mod-hit json proxy "chatgpt-proxy, moderation on, cache hit" \
            "http://127.0.0.1:$PROXY_PORT$CHAT" "$KEY" "" "$PROXY_PID" "same prompt every request"
        bench json-proxy-mod-miss json proxy "chatgpt-proxy, moderation on, cache miss" \
            "http://127.0.0.1:$PROXY_PORT$CHAT" "$KEY" "--unique" "$PROXY_PID" \
            "a new prompt every request: one extra upstream /v1/moderations call each"
    else
        unavailable json-proxy-mod-hit json proxy "chatgpt-proxy, moderation on" \
            "the proxy did not start or answer with moderation on"
    fi
    stop_proxy
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"

# --- time to first chunk -----------------------------------------------------------------
if [ "${BENCH_FIRST_CHUNK:-1}" = 1 ]; then
    say "time to first chunk (bench/first_chunk.py)"
    run_fg "$PY" "$HERE/first_chunk.py" --tmp "$TMP/first_chunk" --server-cpu "$SERVER_CPU" \
        --load-cpu "$LOAD_CPU" --markdown "$TMP/first_chunk.md" >&2 \
        || echo "first_chunk.py failed (run it alone: .venv/bin/python bench/first_chunk.py)" \
            >"$TMP/first_chunk.md"
fi

# --- report ------------------------------------------------------------------------------
mkdir -p "$HERE/results"
"$PY" "$HERE/report.py" "$TMP" --out "$HERE/results/latest.md"
