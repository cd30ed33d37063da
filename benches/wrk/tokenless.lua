-- wrk script of the benchmark's flood: GET /v1/workflows with no Authorization header, as a
-- client without a token would hammer the gateway. Every answer is a 401; the harness only
-- reads how many were sent.
wrk.method = "GET"

done = function(summary, latency, requests)
  io.write(string.format('BENCH {"requests":%d,"duration_us":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration, summary.errors.status))
end
