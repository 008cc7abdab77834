-- POST {prefix}/loans/{id}/payments: 1.00 on a random loan (ids file: loan ids), with a unique
-- Idempotency-Key and external_ref per request.
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local common = require("common")

setup = common.setup
init = common.init

local BODY = '{"amount":"1.00","channel":"pos","external_ref":"%s"}'

function request()
  local ref = common.next_ref()
  local path = common.prefix .. "/loans/" .. common.random_id() .. "/payments"
  return wrk.format("POST", path, common.headers(ref), string.format(BODY, ref))
end
