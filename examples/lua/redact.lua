-- redact.lua: on_complete removes e-mail addresses and "sk-..." secrets
-- from the request body and the captured response before the event leaves
-- the gateway, and tags the event when it removed anything.

-- A pattern like "[%w.]+@..." retried at every position of a long run
-- without '@' (base64 image data) takes time quadratic in the run, and the
-- hook would fail at its deadline on a large body, so e-mail addresses are found
-- from each '@' outward instead, and keys from each "sk-", found by plain
-- search, which is linear.
local LOCAL = "[%w%.%%%+%-_]"         -- a character of the part before '@'
local DOMAIN = "^[%w%-_]+%.[%w%.%-_]+" -- the part after '@', anchored
local SECRET = "^sk%-[%w%-_]+"         -- anchored

-- scrub_emails replaces each local@domain.tld in s with "[email]", as
-- string.gsub(s, LOCAL .. "+@[%w%-_]+%.[%w%.%-_]+", "[email]") would.
-- joined returns s with its n replacements: the pieces in out, then s from
-- done on (s itself when nothing was replaced).
local function joined(s, out, n, done)
  if n == 0 then
    return s, 0
  end
  out[#out + 1] = string.sub(s, done)
  return table.concat(out), n
end

local function scrub_emails(s)
  local at = string.find(s, "@", 1, true)
  if not at then
    return s, 0
  end
  local out, n = {}, 0
  local done = 1 -- s[done..] is not yet copied to out
  local lo = 1   -- the local part of the next address starts at lo or later
  while at do
    -- The local part is the run of LOCAL characters that ends at at-1; it
    -- cannot reach past lo, where the previous '@' or address ended.
    local before = string.reverse(string.sub(s, lo, at - 1))
    local _, len = string.find(before, "^" .. LOCAL .. "*")
    local _, last = string.find(s, DOMAIN, at + 1)
    if len > 0 and last then
      out[#out + 1] = string.sub(s, done, at - len - 1)
      out[#out + 1] = "[email]"
      n = n + 1
      done = last + 1
      lo = last + 1
    else
      lo = at + 1
    end
    at = string.find(s, "@", lo, true)
  end
  return joined(s, out, n, done)
end

-- scrub_secrets replaces each sk-... key in s with "[secret]", as
-- string.gsub(s, "sk%-[%w%-_]+", "[secret]") would.
local function scrub_secrets(s)
  local at = string.find(s, "sk-", 1, true)
  if not at then
    return s, 0
  end
  local out, n, done = {}, 0, 1
  while at do
    local _, last = string.find(s, SECRET, at)
    if last then
      out[#out + 1] = string.sub(s, done, at - 1)
      out[#out + 1] = "[secret]"
      n = n + 1
      done = last + 1
      at = string.find(s, "sk-", done, true)
    else
      at = string.find(s, "sk-", at + 1, true)
    end
  end
  return joined(s, out, n, done)
end

-- might_hold tells whether the JSON text s can hold anything to redact
-- (an escape such as \u0040 may hide an '@'), so that a body without is not
-- decoded.
local function might_hold(s)
  return string.find(s, "@", 1, true) or string.find(s, "sk-", 1, true)
    or string.find(s, "\\u", 1, true)
end

local function scrub(s)
  local n1, n2
  s, n1 = scrub_emails(s)
  s, n2 = scrub_secrets(s)
  return s, n1 + n2
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
  local body = might_hold(ev.request_body:raw()) and ev.request_body:table()
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
