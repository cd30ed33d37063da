-- wrk script of the benchmark: POSTs a trigger with the bearer token in $BENCH_TOKEN, and
-- prints one JSON line at the end for the harness (rate, latency percentiles in µs, and
-- every response that was not a 2xx, so a run full of refusals cannot pass for fast).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.body = '{"input":{"order":"A-1042","amount_cents":1999}}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
