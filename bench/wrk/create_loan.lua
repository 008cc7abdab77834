-- POST {prefix}/loans: a 12-month loan for a random borrower (ids file: borrower ids), with a
-- unique Idempotency-Key and merchant_order_ref per request.
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local common = require("common")

setup = common.setup
init = common.init

local BODY = '{"borrower_id":"%s","product_code":"BENCH12","principal":"%d.00",'
  .. '"term":12,"merchant_order_ref":"%s"}'

function request()
  local ref = common.next_ref()
  local body = string.format(BODY, common.random_id(), math.random(1000, 9000), ref)
  return wrk.format("POST", common.prefix .. "/loans", common.headers(ref), body)
end
