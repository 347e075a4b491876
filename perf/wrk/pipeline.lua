-- HTTP/1.1 pipelining: each write carries PERF_PIPELINE_DEPTH (default 16) GETs of the URL's path.
dofile(os.getenv("PERF_WRK_DIR") .. "/report.lua")

local depth = tonumber(os.getenv("PERF_PIPELINE_DEPTH") or "16")
local batch

function init(args)
  local requests = {}
  for i = 1, depth do
    requests[i] = wrk.format(nil, wrk.path)
  end
  batch = table.concat(requests)
end

function request()
  return batch
end
