-- wrk script: POST an image file to the daemon.
--   wrk -t2 -c16 -d10s -s scripts/wrk-post-image.lua \
--       http://127.0.0.1:8000/v2/models/ppocr_cls/infer -- .cache/testdata/photo_1280x720.jpg
-- The content type follows the extension (.png → image/png, else image/jpeg).
-- Prints the count of non-2xx responses at the end.
non2xx = 0 -- global: done() reads it from each thread with t:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1] or ".cache/testdata/photo_1280x720.jpg"
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = path:match("%.png$") and "image/png" or "image/jpeg"
end

function response(status, headers, body)
  if status < 200 or status >= 300 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + (t:get("non2xx") or 0)
  end
  io.write(string.format("non-2xx responses: %d\n", total))
end
