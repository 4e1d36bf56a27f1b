-- wrk script for scripts/bench-wrk: POST /v1/track, one ~500-byte track event
-- per request (the same shape as `switchyard bench`'s), each with its own
-- messageId, so that no request is a duplicate. Usage:
--   wrk -t2 -c64 -d5s -s bench/wrk-track.lua http://HOST/v1/track -- RUN_ID WRITE_KEY_BASE64
local count = 0
local run = "run"
local threads = 0
local pad = string.rep("x", 120)

function setup(thread)
  threads = threads + 1
  thread:set("thread", threads)
end

function init(args)
  run = (args[1] or "run") .. "-" .. tostring(wrk.thread:get("thread"))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Basic " .. (args[2] or "")
end

request = function()
  count = count + 1
  local body = '{"type":"track","event":"Order Completed","userId":"user-' .. (count % 97) ..
    '","messageId":"wrk-' .. run .. '-' .. count ..
    '","properties":{"revenue":42.5,"currency":"EUR","coupon":"SPRING","products":[' ..
    '{"sku":"SKU-1","name":"Widget","price":19.99,"quantity":1},' ..
    '{"sku":"SKU-2","name":"Gadget","price":22.51,"quantity":1}],"pad":"' .. pad ..
    '"},"context":{"library":{"name":"wrk","version":"1"},"ip":"127.0.0.1","locale":"en-US",' ..
    '"userAgent":"Mozilla/5.0 (X11; Linux x86_64) wrk"}}'
  return wrk.format(nil, nil, nil, body)
end
