-- tenant_auth.lua: on_auth accepts a tenant that proves itself with
--   X-Tenant: <tenant>
--   X-Tenant-Signature: hex(hmac_sha256(secret, tenant))
-- and gives it an identity with its limits. Requests without X-Tenant are
-- left to the normal API key check (return nil); a bad signature or an
-- unknown tenant is refused (return false).
--
-- The secrets live in this file: protect it like the gateway's config.

local tenants = {
  acme = {
    secret = "acme-signing-secret",
    user_id = "acme-corp",
    limits = { requests_per_minute = 600, tokens_per_minute = 200000 },
  },
  globex = {
    secret = "globex-signing-secret",
    user_id = "globex",
    limits = { requests_per_minute = 60, tokens_per_minute = 20000 },
  },
}

function on_auth(req)
  local tenant = req.headers:get("X-Tenant")
  if tenant == nil then
    return nil
  end
  local t = tenants[tenant]
  local sig = req.headers:get("X-Tenant-Signature")
  -- The signature is the tenant's credential: like an API key, it is
  -- not passed on to the backend (header edits in on_auth apply).
  req.headers:del("X-Tenant-Signature")
  if t == nil or sig == nil then
    return false
  end
  local want = llmproxy.hmac_sha256(t.secret, tenant)
  if not llmproxy.secure_equal(string.lower(sig), want) then
    llmproxy.log("warn", "bad tenant signature for " .. tenant)
    return false
  end
  return {
    id = "tenant:" .. tenant,
    name = tenant,
    user_id = t.user_id,
    limits = t.limits,
  }
end
