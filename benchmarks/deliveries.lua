-- wrk script of benchmarks/ingestion.py: each wrk thread sends the pre-signed webhook
-- deliveries of its own file (PREFIX.<thread number>), one per request, in order; one per
-- line: webhook-id TAB webhook-timestamp TAB webhook-signature TAB body. When a thread runs
-- out it starts again from its first (counted as "repeated": size the files so that none is).
-- wrk 4.1 also calls request() once on its first thread to check the script: that delivery
-- is never sent.
-- At the end it prints one line, "wrk-json <JSON>", with the figures ingestion.py reads.
--
--     wrk -t2 -c16 -d15s --latency -s benchmarks/deliveries.lua URL -- PREFIX

local threads = {}
local numbered = 0

function setup(thread)
   thread:set("number", numbered)
   numbered = numbered + 1
   table.insert(threads, thread)
end

function init(args)
   requests = {}
   for line in io.lines(args[1] .. "." .. number) do
      local id, stamp, signature, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", nil, {
         ["Content-Type"] = "application/json",
         ["webhook-id"] = id,
         ["webhook-timestamp"] = stamp,
         ["webhook-signature"] = signature,
      }, body)
   end
   loaded, sent = #requests, 0
end

function request()
   sent = sent + 1
   return requests[(sent - 1) % loaded + 1]
end

function done(summary, latency, requests)
   local sent, repeated = 0, 0
   for _, thread in ipairs(threads) do
      local count, loaded = thread:get("sent"), thread:get("loaded")
      sent = sent + count
      if count > loaded then repeated = repeated + count - loaded end
   end
   local e = summary.errors
   io.write(string.format(
      'wrk-json {"requests": %d, "duration_us": %d, "bytes": %d, "sent": %d, "repeated": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p99_9": %d, "max": %d}}\n',
      summary.requests, summary.duration, summary.bytes, sent, repeated,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end
