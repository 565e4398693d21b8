-- wrk script: each request from one of 64 client addresses (X-Forwarded-For),
-- so that a fleet rule keyed by address has 64 buckets.
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = "198.51.100." .. (n % 64 + 1) })
end
