-- POSTs a 64 KiB body to /hash on every request (the functional check verifies the digest itself).
dofile(os.getenv("PERF_WRK_DIR") .. "/report.lua")

wrk.method = "POST"
wrk.body = string.rep("0123456789abcdef", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
