#!/usr/bin/env bash
# chatgpt-proxy throughput / latency / memory benchmark. See bench/README.md.
#
#   bench/run.sh                      # the standard run (~4.5 minutes)
#   BENCH_ROUNDS=5 bench/run.sh       # more interleaved rounds
#   BENCH_REDIS=1 BENCH_MODERATION=1 bench/run.sh
#
# Environment:
#   BENCH_ROUNDS       interleaved rounds of the chatgpt-proxy variants (3)
#   BENCH_DURATION     seconds per measured wrk run (5 with 2+ rounds, else 10)
#   BENCH_WARMUP       seconds of the warm-up run before each measured one (2)
#   BENCH_CONNECTIONS  wrk connections of the throughput runs (50)
#   BENCH_LATENCY=0    skip the latency runs at one connection
#   BENCH_LATENCY_DURATION  seconds per latency run at one connection (5)
#   BENCH_LATENCY_ROUNDS    interleaved rounds of the latency runs (BENCH_ROUNDS)
#   BENCH_REDIS=1      add a run with redis_url and a key with rpm/tpm limits
#   BENCH_REDIS_URL    the Redis for that run (default: a private redis-server on the load core,
#                      so Redis's own CPU is not taken from the measured server's core)
#   BENCH_MODERATION=1 add runs with moderation on: same prompt (cache hits), new prompts (misses)
#   BENCH_FIRST_CHUNK=0  skip bench/first_chunk.py (time to first chunk)
#   BENCH_SERVER_CPU / BENCH_LOAD_CPU   cores of the measured server / of upstream + wrk (0 / 1)
#   BENCH_PYSPY=1      profile the non-streaming chatgpt-proxy with py-spy (hot spots in the report)
#   BENCH_PYSPY_BIN    py-spy to use (default: py-spy on PATH, then .venv/bin/py-spy)
#   BENCH_KEEP_TMP=1   keep the temporary directory (configs, logs, raw wrk output)
set -euo pipefail

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
ROUNDS="${BENCH_ROUNDS:-3}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer, not '$ROUNDS'"
if [ "$ROUNDS" -ge 2 ]; then DURATION="${BENCH_DURATION:-5}"; else DURATION="${BENCH_DURATION:-10}"; fi
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNECTIONS:-50}"
LATENCY="${BENCH_LATENCY:-1}"
LAT_DURATION="${BENCH_LATENCY_DURATION:-5}"
LAT_WARMUP=1
LAT_ROUNDS="${BENCH_LATENCY_ROUNDS:-$ROUNDS}"
[[ "$LAT_ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_LATENCY_ROUNDS must be a positive integer"
REDIS_URL="${BENCH_REDIS_URL:-}"
SERVER_CPU="${BENCH_SERVER_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"

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
CHAT=/v1/chat/completions

# --- temporary directory, processes, cleanup ---------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/chatgpt-proxy-bench.XXXXXX")"
chmod 755 "$TMP"   # nginx workers run as nobody when started as root
mkdir -p "$TMP/wrk"
PIDS=()

stop_pid() {  # stop_pid PID: TERM, wait up to 10 s, then KILL
    local pid="$1" n=0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true   # a parked (SIGSTOPped) server handles TERM once resumed
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

# --- measured servers ----------------------------------------------------------------------
# Every server (the two nginx, and each Python server variant on its own port, with its own
# copy of the sqlite key store) is started once and stays up for all rounds, so the rounds can
# interleave the variants. While one is measured, the other Python servers are parked
# (SIGSTOP): an idle one still wakes up to refresh its keys (~0.3% of a core each), and parked
# they take nothing from the measured one's core.
declare -A SRV_PID=() SRV_URL=()
PY_SERVERS=()
FREE_PORTS=()
take_port() { PORT="${FREE_PORTS[0]}"; FREE_PORTS=("${FREE_PORTS[@]:1}"); }

# start_server NAME PORT CMD...: start CMD on the server core and wait for /healthz
start_server() {
    local name="$1" port="$2" pid
    shift 2
    taskset -c "$SERVER_CPU" "$@" >"$TMP/server-$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if "${LIB[@]}" wait "http://127.0.0.1:$port/healthz" --timeout 30; then
        SRV_PID[$name]=$pid
        SRV_URL[$name]="http://127.0.0.1:$port$CHAT"
        PY_SERVERS+=("$name")
        return 0
    fi
    tail -n 30 "$TMP/server-$name.log" >&2
    stop_pid "$pid"
    forget_pid "$pid"
    return 1
}

start_passthrough() {  # start_passthrough NAME UPSTREAM_PORT
    take_port
    start_server "$1" "$PORT" "$PY" "$HERE/passthrough.py" --port "$PORT" \
        --upstream "http://127.0.0.1:$2"
}

start_cgp() {  # start_cgp NAME UPSTREAM_PORT [lib.py proxy-conf flags...]: its own sqlite copy
    local name="$1" up="$2" f
    shift 2
    take_port
    for f in "$TMP/keys.db"*; do cp "$f" "$TMP/db-$name.db${f#"$TMP/keys.db"}"; done
    "${LIB[@]}" proxy-conf "$TMP/proxy-$name.yaml" --port "$PORT" \
        --upstream "http://127.0.0.1:$up/v1" --db "sqlite:///$TMP/db-$name.db" "$@"
    start_server "$name" "$PORT" "$CGP" serve --config "$TMP/proxy-$name.yaml"
}

park_all_but() {  # park_all_but [NAME]: SIGCONT the server NAME, SIGSTOP the other Python ones
    local name
    for name in "${PY_SERVERS[@]}"; do
        [ -n "${SRV_PID[$name]:-}" ] || continue
        if [ "$name" = "${1:-}" ]; then
            kill -CONT "${SRV_PID[$name]}" 2>/dev/null || true
        else
            kill -STOP "${SRV_PID[$name]}" 2>/dev/null || true
        fi
    done
}

server_down() {  # server_down NAME: stop one Python server and forget it
    local pid="${SRV_PID[$1]:-}"
    [ -n "$pid" ] || return 0
    kill -CONT "$pid" 2>/dev/null || true
    stop_pid "$pid"
    forget_pid "$pid"
    unset "SRV_PID[$1]" "SRV_URL[$1]"
}

# --- scenarios -----------------------------------------------------------------------------
declare -A S_GROUP=() S_KIND=() S_LABEL=() S_SERVER=() S_KEY=() S_FLAGS=() S_NOTE=()
RUNS="$TMP/runs.tsv"
printf 'id\tround\tgroup\tkind\tlabel\trss_kb\thwm_kb\tcpu_s\tnote\n' >"$RUNS"
LAT="$TMP/latency.tsv"            # the latency scenarios: id, label, note
printf 'id\tlabel\tnote\n' >"$LAT"
LAT_RUNS="$TMP/latency-runs.tsv"  # one line per latency run: id, round, CPU seconds
printf 'id\tround\tcpu_s\n' >"$LAT_RUNS"

unavailable() {  # unavailable ID GROUP KIND LABEL NOTE
    printf '%s\t0\t%s\t%s\t%s\t\t\t\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RUNS"
    say "$4 ($2): not available: $5"
}

# scenario ID GROUP KIND LABEL SERVER KEY BODYFLAGS [NOTE]: 0 if its server is up
scenario() {
    S_GROUP[$1]="$2" S_KIND[$1]="$3" S_LABEL[$1]="$4" S_SERVER[$1]="$5" S_KEY[$1]="$6"
    S_FLAGS[$1]="$7" S_NOTE[$1]="${8:-}"
    [ -n "${SRV_PID[$5]:-}" ]
}

# bench ID ROUND: warm-up, measured run, CPU time and RSS of the scenario's server
bench() {
    local id="$1" round="$2" server url pid body mem cpu0 cpu1 stamp
    server="${S_SERVER[$id]}" url="${SRV_URL[${S_SERVER[$id]}]}" pid="${SRV_PID[${S_SERVER[$id]}]}"
    # shellcheck disable=SC2086
    body="$("${LIB[@]}" body ${S_FLAGS[$id]})"
    stamp="$id-r$round-$(date +%s%N)"   # a new salt per run: no run pre-fills another's cache
    park_all_but "$server"
    case "${S_KIND[$id]}" in
        direct | nginx) say "${S_LABEL[$id]} (${S_GROUP[$id]}): ${WARMUP}s warm-up + ${DURATION}s" ;;
        *) say "${S_LABEL[$id]} (${S_GROUP[$id]}), round $round/$ROUNDS: ${WARMUP}s warm-up + ${DURATION}s" ;;
    esac
    BENCH_BODY="$body" BENCH_KEY="${S_KEY[$id]}" BENCH_SALT="warm-$stamp" \
        run_fg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$HERE/post.lua" "$url" >/dev/null
    cpu0="$("${LIB[@]}" cputime "$pid")"
    BENCH_BODY="$body" BENCH_KEY="${S_KEY[$id]}" BENCH_SALT="run-$stamp" \
        run_fg taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$HERE/post.lua" \
        "$url" >"$TMP/wrk/$id.r$round.txt"
    cpu1="$("${LIB[@]}" cputime "$pid")"
    mem="$(rss_of "$pid")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$round" "${S_GROUP[$id]}" "${S_KIND[$id]}" \
        "${S_LABEL[$id]}" "${mem% *}" "${mem#* }" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}')" "${S_NOTE[$id]}" >>"$RUNS"
    grep -E 'Requests/sec|Non-2xx|Socket errors' "$TMP/wrk/$id.r$round.txt" >&2 || true
}

# lat_scenario ID LABEL SERVER KEY BODYFLAGS [NOTE]: a latency run, if its server is up
declare -A L_LABEL=() L_SERVER=() L_KEY=() L_FLAGS=()
LAT_IDS=()
lat_scenario() {
    [ -n "${SRV_PID[$3]:-}" ] || return 0
    L_LABEL[$1]="$2" L_SERVER[$1]="$3" L_KEY[$1]="$4" L_FLAGS[$1]="$5"
    LAT_IDS+=("$1")
    printf '%s\t%s\t%s\n' "$1" "$2" "${6:-}" >>"$LAT"
}

# latency ID ROUND: one connection, one request at a time
latency() {
    local id="$1" round="$2" server url pid body cpu0 cpu1 stamp
    server="${L_SERVER[$id]}" url="${SRV_URL[${L_SERVER[$id]}]}" pid="${SRV_PID[${L_SERVER[$id]}]}"
    # shellcheck disable=SC2086
    body="$("${LIB[@]}" body ${L_FLAGS[$id]})"
    stamp="lat-$id-r$round-$(date +%s%N)"
    park_all_but "$server"
    say "${L_LABEL[$id]}, one connection, round $round/$LAT_ROUNDS: ${LAT_WARMUP}s warm-up + ${LAT_DURATION}s"
    BENCH_BODY="$body" BENCH_KEY="${L_KEY[$id]}" BENCH_SALT="warm-$stamp" \
        run_fg taskset -c "$LOAD_CPU" wrk -t1 -c1 -d"${LAT_WARMUP}s" -s "$HERE/post.lua" "$url" >/dev/null
    cpu0="$("${LIB[@]}" cputime "$pid")"
    BENCH_BODY="$body" BENCH_KEY="${L_KEY[$id]}" BENCH_SALT="run-$stamp" \
        run_fg taskset -c "$LOAD_CPU" wrk -t1 -c1 -d"${LAT_DURATION}s" --latency -s "$HERE/post.lua" \
        "$url" >"$TMP/wrk/lat-$id.r$round.txt"
    cpu1="$("${LIB[@]}" cputime "$pid")"
    printf '%s\t%s\t%s\n' "$id" "$round" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}')" >>"$LAT_RUNS"
    grep -E '^\s+(50|99)%|Non-2xx|Socket errors' "$TMP/wrk/lat-$id.r$round.txt" >&2 || true
}

# profile URL KEY BODY PID: one more run, not in the table (py-spy pauses the process to sample)
profile() {
    local seconds=$((DURATION > 4 ? DURATION - 2 : 2)) spy
    say "profiling one more run with py-spy (${seconds}s, 100 Hz; not counted in the table)"
    BENCH_BODY="$3" BENCH_KEY="$2" BENCH_SALT="prof$(date +%s%N)" \
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
    echo "throughput: wrk -t1 -c$CONNS -d${DURATION}s after a ${WARMUP}s warm-up; chatgpt-proxy variants and the bare aiohttp pass-through: $ROUNDS interleaved round(s) (the order rotated by one each round), direct and nginx: 1 run"
    [ "$LATENCY" != 1 ] || echo "latency: wrk -t1 -c1 -d${LAT_DURATION}s --latency after a ${LAT_WARMUP}s warm-up, $LAT_ROUNDS interleaved round(s)"
    echo "pinning: measured server on core $SERVER_CPU, upstream nginx + wrk on core $LOAD_CPU"
} >"$META"
cat "$META" >&2

# --- fake upstream (nginx) and the reference proxy (nginx proxy_pass) ----------------------
read -r -a FREE_PORTS <<<"$("${LIB[@]}" ports 14)"
take_port; UP_JSON=$PORT
take_port; UP_SSE=$PORT
take_port; NGX_JSON=$PORT
take_port; NGX_SSE=$PORT
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
SRV_PID[json-up]=$UPSTREAM_WORKER SRV_URL[json-up]="http://127.0.0.1:$UP_JSON$CHAT"
SRV_PID[sse-up]=$UPSTREAM_WORKER SRV_URL[sse-up]="http://127.0.0.1:$UP_SSE$CHAT"
SRV_PID[json-ngx]=$NGXPROXY_WORKER SRV_URL[json-ngx]="http://127.0.0.1:$NGX_JSON$CHAT"
SRV_PID[sse-ngx]=$NGXPROXY_WORKER SRV_URL[sse-ngx]="http://127.0.0.1:$NGX_SSE$CHAT"
"${LIB[@]}" probe "${SRV_URL[json-up]}" || die "the fake upstream answers wrongly"
"${LIB[@]}" probe "${SRV_URL[sse-up]}" --stream || die "the fake upstream answers wrongly"
"${LIB[@]}" probe "${SRV_URL[json-ngx]}" || die "nginx proxy_pass answers wrongly"
"${LIB[@]}" probe "${SRV_URL[sse-ngx]}" --stream || die "nginx proxy_pass answers wrongly"

# --- chatgpt-proxy: key store and client keys (each server gets a copy of keys.db) ---------
"${LIB[@]}" proxy-conf "$TMP/keys.yaml" --port 1 --upstream "http://127.0.0.1:$UP_JSON/v1" \
    --db "sqlite:///$TMP/keys.db"
new_key() { "$CGP" keys create --config "$TMP/keys.yaml" "$@" | tail -n 1; }
KEY="$(new_key --name bench)"
[ -n "$KEY" ] || die "could not create a client key"
REDIS_ON=0
if [ "${BENCH_REDIS:-0}" = 1 ] && [ -z "$REDIS_URL" ]; then
    if command -v redis-server >/dev/null 2>&1; then
        take_port
        taskset -c "$LOAD_CPU" redis-server --port "$PORT" --bind 127.0.0.1 --save '' \
            --appendonly no >"$TMP/redis.log" 2>&1 &
        PIDS+=("$!")
        REDIS_URL="redis://127.0.0.1:$PORT/0"
        for _ in $(seq 50); do
            "$PY" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1]).ping()' "$REDIS_URL" \
                2>/dev/null && break
            sleep 0.1
        done
    else
        REDIS_URL="redis://127.0.0.1:6379/0"
    fi
fi
if [ "${BENCH_REDIS:-0}" = 1 ]; then
    if "$PY" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()' \
        "$REDIS_URL" 2>/dev/null; then
        REDIS_ON=1
        LIMITED_KEY="$(new_key --name bench-limited --rpm 100000000 --tpm 100000000000)"
        PROBE_KEY="$(new_key --name bench-rpm1 --rpm 1)"
    fi
fi

# --- start every measured Python server (all stay up, idle between their runs) -------------
say "starting the Python servers (core $SERVER_CPU)"
for group in json sse; do
    if [ $group = json ]; then up=$UP_JSON; else up=$UP_SSE; fi
    start_passthrough "$group-floor" "$up" || true
    start_cgp "$group-logoff" "$up" || true
    start_cgp "$group-logon" "$up" --access-log || true
done
if [ $REDIS_ON = 1 ]; then start_cgp json-redis "$UP_JSON" --redis "$REDIS_URL" || true; fi
if [ "${BENCH_MODERATION:-0}" = 1 ]; then
    # two processes, so that the hit run never sees the miss run's prompts (nor its memory)
    start_cgp json-modhit "$UP_JSON" --moderation || true
    start_cgp json-modmiss "$UP_JSON" --moderation || true
fi
probe_server() {  # probe_server NAME [probe flags]: stop the server if it answers wrongly
    local name="$1"
    shift
    [ -n "${SRV_PID[$name]:-}" ] || return 0
    "${LIB[@]}" probe "${SRV_URL[$name]}" "$@" || server_down "$name"
}
probe_server json-floor
probe_server sse-floor --stream
probe_server json-logoff --key "$KEY"
probe_server json-logon --key "$KEY"
probe_server sse-logoff --key "$KEY" --stream
probe_server sse-logon --key "$KEY" --stream
if [ $REDIS_ON = 1 ]; then probe_server json-redis --key "$LIMITED_KEY"; fi
probe_server json-modhit --key "$KEY"
probe_server json-modmiss --key "$KEY"

# --- the scenarios -------------------------------------------------------------------------
ONCE=()    # direct and nginx: one run each
ROUND=()   # the variants compared with one another: every round, interleaved
for group in json sse; do
    flags=""; [ $group = sse ] && flags="--stream"
    scenario "$group-direct" $group direct "direct (wrk → upstream nginx)" "$group-up" "" "$flags"
    ONCE+=("$group-direct")
    scenario "$group-nginx" $group nginx "nginx proxy_pass" "$group-ngx" "" "$flags"
    ONCE+=("$group-nginx")
    label="bare aiohttp pass-through (the stack's floor)"
    if scenario "$group-floor" $group floor "$label" "$group-floor" "" "$flags"; then
        ROUND+=("$group-floor")
    else
        unavailable "$group-floor" $group floor "$label" "it did not start or answer"
    fi
    # access_log on right after the floor: the paired ratios are against the floor and against
    # access_log off, so access_log off sits next to both and next to the optional ones
    for log in on off; do
        id="$group-proxy-log$log" label="chatgpt-proxy, access_log $log"
        if scenario "$id" $group proxy "$label" "$group-log$log" "$KEY" "$flags"; then
            ROUND+=("$id")
        else
            unavailable "$id" $group proxy "$label" "the proxy did not start or answer (see its log)"
        fi
    done
    [ $group = json ] || continue
    if [ "${BENCH_REDIS:-0}" = 1 ]; then
        id=json-proxy-redis label="chatgpt-proxy, Redis limits (rpm+tpm key)"
        if [ $REDIS_ON = 0 ]; then
            unavailable $id json proxy "$label" "no Redis answers at $REDIS_URL"
        elif [ -z "${SRV_PID[json-redis]:-}" ]; then
            unavailable $id json proxy "$label" "the proxy did not start or answer with redis_url set"
        else
            note=""
            if ! enforced="$("${LIB[@]}" limits-probe "${SRV_URL[json-redis]}" --key "$PROBE_KEY")"; then
                note="limits NOT enforced by this build (an rpm=1 key was never refused): not yet a limits number"
            fi
            echo "$enforced" >&2
            scenario $id json proxy "$label" json-redis "$LIMITED_KEY" "" "$note"
            ROUND+=("$id")
        fi
    fi
    if [ "${BENCH_MODERATION:-0}" = 1 ]; then
        id=json-proxy-mod-hit label="chatgpt-proxy, moderation on, cache hit"
        if scenario $id json proxy "$label" json-modhit "$KEY" "" "same prompt every request"; then
            ROUND+=("$id")
        else
            unavailable $id json proxy "$label" "the proxy did not start or answer with moderation on"
        fi
        id=json-proxy-mod-miss label="chatgpt-proxy, moderation on, cache miss"
        if scenario $id json proxy "$label" json-modmiss "$KEY" "--unique" \
            "a new prompt every request: one extra upstream /v1/moderations call each"; then
            ROUND+=("$id")
        else
            unavailable $id json proxy "$label" "the proxy did not start or answer with moderation on"
        fi
    fi
done

# --- throughput: direct and nginx once, then the rounds --------------------------------------
# rotate ROUND IDS...: sets `order` to IDS turned by ROUND-1 places. A B C, B C A, C A B...:
# every scenario takes every place in turn, so neither a slow spell nor what ran just before
# favours one of them.
rotate() {
    local turn=$((($1 - 1) % ($# - 1)))
    shift
    order=("${@:turn+1}" "${@:1:turn}")
}
for id in "${ONCE[@]}"; do bench "$id" 1; done
for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round of $ROUNDS"
    rotate "$round" "${ROUND[@]}"
    for id in "${order[@]}"; do bench "$id" "$round"; done
done

# --- latency at one connection: rounds too, interleaved the same way ------------------------
if [ "$LATENCY" = 1 ]; then
    lat_scenario direct "direct (wrk → upstream nginx)" json-up "" ""
    lat_scenario floor "bare aiohttp pass-through (the stack's floor)" json-floor "" ""
    lat_scenario proxy "chatgpt-proxy, moderation off" json-logoff "$KEY" ""
    lat_scenario mod-hit "chatgpt-proxy, moderation on, cache hit" json-modhit "$KEY" "" \
        "same prompt every request"
    lat_scenario mod-miss "chatgpt-proxy, moderation on, cache miss" json-modmiss "$KEY" "--unique" \
        "a new prompt every request: one upstream /v1/moderations call each"
    lat_scenario redis "chatgpt-proxy, Redis limits (rpm+tpm key)" json-redis "${LIMITED_KEY:-}" ""
    for ((round = 1; round <= LAT_ROUNDS; round++)); do
        rotate "$round" "${LAT_IDS[@]}"
        for id in "${order[@]}"; do latency "$id" "$round"; done
    done
fi

if [ -n "$PYSPY" ] && [ -n "${SRV_PID[json-logoff]:-}" ]; then
    park_all_but json-logoff
    profile "${SRV_URL[json-logoff]}" "$KEY" "$("${LIB[@]}" body)" "${SRV_PID[json-logoff]}"
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"
say "stopping the Python servers"
for name in "${PY_SERVERS[@]}"; do server_down "$name"; done

# --- time to first chunk -----------------------------------------------------------------
if [ "${BENCH_FIRST_CHUNK:-1}" = 1 ]; then
    say "time to first chunk (bench/first_chunk.py)"
    run_fg "$PY" "$HERE/first_chunk.py" --tmp "$TMP/first_chunk" --server-cpu "$SERVER_CPU" \
        --load-cpu "$LOAD_CPU" --markdown "$TMP/first_chunk.md" >&2 \
        || echo "first_chunk.py failed (run it alone: .venv/bin/python bench/first_chunk.py)" \
            >"$TMP/first_chunk.md"
fi
echo "run time: $((SECONDS / 60)) min $((SECONDS % 60)) s" >>"$META"

# --- report ------------------------------------------------------------------------------
mkdir -p "$HERE/results"
"$PY" "$HERE/report.py" "$TMP" --out "$HERE/results/latest.md"
