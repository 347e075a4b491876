-- wrk script for the soak: alternates GET /plaintext and POST /echo (a 1 KiB body), and counts every response
-- that is not 2xx. wrk gives each thread its own Lua state: the counts are summed in done().
local body = string.rep("0123456789abcdef", 64)
-- Built in init(): wrk adds the Host header to wrk.headers only after the script's top level has run.
local plaintext, echo
local threads = {}
local n = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  plaintext = wrk.format("GET", "/plaintext")
  echo = wrk.format("POST", "/echo", { ["Content-Type"] = "application/octet-stream" }, body)
  non2xx = 0
  badecho = 0
end

function request()
  n = n + 1
  if n % 2 == 0 then
    return echo
  end
  return plaintext
end

function response(status, headers, resp)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif #resp ~= 13 and #resp ~= #body then
    badecho = badecho + 1
  end
end

function done(summary, latency, requests)
  local total_non2xx, total_bad = 0, 0
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + thread:get("non2xx")
    total_bad = total_bad + thread:get("badecho")
  end
  io.write(string.format("SOAK-WRK requests=%d non2xx=%d bad_bodies=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d p99_ms=%.2f\n",
    summary.requests, total_non2xx, total_bad, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(99) / 1000))
end
