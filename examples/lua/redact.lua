-- redact.lua: on_complete removes e-mail addresses and "sk-..." secrets
-- from the request body and the captured response before the event leaves
-- the gateway, and tags the event when it removed anything.

local patterns = {
  { "[%w%.%%%+%-_]+@[%w%-_]+%.[%w%.%-_]+", "[email]" },
  { "sk%-[%w%-_]+", "[secret]" },
}

local function scrub(s)
  local total = 0
  for _, p in ipairs(patterns) do
    local n
    s, n = string.gsub(s, p[1], p[2])
    total = total + n
  end
  return s, total
end

-- scrub_value scrubs every string inside v (a decoded JSON value) in place
-- and returns the new value and the number of replacements.
local function scrub_value(v)
  if type(v) == "string" then
    return scrub(v)
  elseif type(v) == "table" then
    local total = 0
    for k, x in pairs(v) do
      local nx, n = scrub_value(x)
      if n > 0 then
        v[k] = nx
        total = total + n
      end
    end
    return v, total
  end
  return v, 0
end

function on_complete(ev)
  local removed = 0
  local body = ev.request_body:table()
  if type(body) == "table" then
    local n
    body, n = scrub_value(body)
    if n > 0 then
      ev.request_body:replace(body)
      removed = removed + n
    end
  end
  if ev.response and type(ev.response.content) == "string" then
    local n
    ev.response.content, n = scrub(ev.response.content)
    removed = removed + n
  end
  if removed > 0 then
    ev.tags.redacted = tostring(removed)
  end
end
