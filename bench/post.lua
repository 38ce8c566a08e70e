-- wrk script: POST the bench chat request (run.sh sets the environment).
--   BENCH_BODY  the JSON body (bench/lib.py body [--stream] [--unique])
--   BENCH_KEY   client key, sent as "Authorization: Bearer ..." when set
-- A body containing the marker @N@ gets it replaced by a counter on every request, so that
-- every prompt is new (moderation cache misses).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
local body = os.getenv("BENCH_BODY") or error("BENCH_BODY is not set")
wrk.body = body

local marker = body:find("@N@", 1, true)
if marker then
  local head, tail = body:sub(1, marker - 1), body:sub(marker + 3)
  local n = 0
  -- a salt per wrk run: a warm-up run must not pre-fill the cache of the measured run
  local salt = os.getenv("BENCH_SALT") or tostring(os.time())
  request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, head .. salt .. "-" .. n .. tail)
  end
end
