-- GET {prefix}/loans/{id} of a random loan (ids file: loan ids).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local common = require("common")

setup = common.setup
init = common.init

function request()
  return wrk.format("GET", common.prefix .. "/loans/" .. common.random_id(), common.headers(nil))
end
