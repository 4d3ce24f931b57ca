-- Random single-key lookups against `govbus query` for wrk (BENCHMARKS.md,
-- "govbus query alone"). The keys are those `govbus bench query` publishes
-- (DR-2026-00000000 …); set KEYS to how many it published and TOKEN to a
-- token of the hrss department:
--   TOKEN=… KEYS=5000000 wrk -t2 -c64 -d20s -s scripts/wrk-query.lua --latency http://127.0.0.1:9470
local keys = tonumber(os.getenv("KEYS") or "1000000")
local sub = os.getenv("SUBSCRIPTION") or "hrss_deaths_counter_check"
math.randomseed(os.time())
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")
request = function()
  local i = math.random(0, keys - 1)
  return wrk.format("GET", string.format("/v1/query/%s/records/DR-2026-%08d", sub, i))
end
