-- Shared by the wrk scripts of bench/http_load.py. Each wrk thread runs its own Lua state:
-- setup() (main state) numbers the threads, init() (thread state) reads the arguments given
-- after `--` on the wrk command line:
--   1 API key   2 path prefix ("/v1" or "")   3 file of ids, one a line   4 run tag
-- Keys and references are "<tag>-<thread>-<counter>": unique per request within a run, and
-- the tag differs between runs and targets.

local M = {}

local thread_count = 0

function M.setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
end

function M.init(args)
  M.token = args[1]
  M.prefix = args[2]
  M.tag = args[4]
  M.ids = {}
  for line in io.lines(args[3]) do
    if line ~= "" then
      M.ids[#M.ids + 1] = line
    end
  end
  assert(#M.ids > 0, "no ids in " .. args[3])
  M.thread = thread_number or 0
  M.counter = 0
  math.randomseed(os.time() * 1000 + M.thread * 7919)
  -- LuaJIT's first values after seeding are poorly spread.
  for _ = 1, 10 do
    math.random()
  end
end

function M.random_id()
  return M.ids[math.random(#M.ids)]
end

function M.next_ref()
  M.counter = M.counter + 1
  return string.format("%s-%d-%d", M.tag, M.thread, M.counter)
end

function M.headers(idempotency_key)
  local headers = {
    ["Authorization"] = "Bearer " .. M.token,
    ["Content-Type"] = "application/json",
  }
  if idempotency_key then
    headers["Idempotency-Key"] = idempotency_key
  end
  return headers
end

return M
