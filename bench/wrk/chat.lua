-- POST one chat completion on every request and check EVERY answer.
--
-- Set by bench/run.py through the environment:
--   BENCH_BODY    the JSON request body
--   BENCH_KEY     the bearer key ("" for none)
--   BENCH_STREAM  "1" for an SSE stream
--   BENCH_EXPECT  the answer's text (" w0 w1 ... w{N-1}")
--   BENCH_CHOICES how many choices a completion has, each with that text
--                 (a fan-out's, one per model; default 1; not for streams)
--
-- An answer is good when its status is 200 and its text is exactly BENCH_EXPECT:
-- in the message of each of the BENCH_CHOICES choices of a completion (no more,
-- no fewer), or concatenated from the chunks' deltas of a stream, which must end
-- with "data: [DONE]". done() prints one JSON line with the counts and latency
-- percentiles (microseconds).

local body = os.getenv("BENCH_BODY") or error("BENCH_BODY is not set")
local key = os.getenv("BENCH_KEY") or ""
local stream = os.getenv("BENCH_STREAM") == "1"
local expect = os.getenv("BENCH_EXPECT") or error("BENCH_EXPECT is not set")
local choices = tonumber(os.getenv("BENCH_CHOICES") or "1")
if stream and choices ~= 1 then
  error("BENCH_CHOICES is for completions: a stream's text is checked as one")
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per thread (each has its own Lua state); read by done() through thread:get.
ok, non2xx, bad = 0, 0, 0
sample = ""

local DONE = "data: [DONE]\n\n"
local expect_pattern = '"content":%s*"' .. expect:gsub("%p", "%%%0") .. '"'

local function stream_text(b)
  local words = {}
  for w in b:gmatch('"content":%s*"([^"]*)"') do
    words[#words + 1] = w
  end
  return table.concat(words)
end

local function good(b)
  if stream then
    return b:sub(-#DONE) == DONE and stream_text(b) == expect
  end
  local found, at = 0, 1
  while true do
    local _, stop = b:find(expect_pattern, at)
    if stop == nil then
      return found == choices
    end
    found, at = found + 1, stop + 1
  end
end

function response(status, headers, b)
  if status ~= 200 then
    non2xx = non2xx + 1
    if sample == "" then
      sample = "status " .. status .. ": " .. b:sub(1, 300)
    end
  elseif good(b) then
    ok = ok + 1
  else
    bad = bad + 1
    if sample == "" then
      sample = "unexpected body: " .. b:sub(1, 300)
    end
  end
end

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local n_ok, n_non2xx, n_bad, first = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    n_ok = n_ok + t:get("ok")
    n_non2xx = n_non2xx + t:get("non2xx")
    n_bad = n_bad + t:get("bad")
    if first == "" then
      first = t:get("sample")
    end
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"ok":%d,"non2xx":%d,"bad_body":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"sample":%s}\n',
    summary.requests, summary.duration, n_ok, n_non2xx, n_bad,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, json_string(first)))
end
