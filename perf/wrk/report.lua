-- Prints one machine-readable line when wrk finishes; perf/run.sh parses it and keeps wrk's text report too.
-- wrk counts a response as a "status" error only when its status is above 399 (the benchmark endpoints never redirect).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK-RESULT requests=%d duration_us=%d bytes=%d p50_us=%.0f p99_us=%.0f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
