-- route_by_header.lua: on_route sends a request to the backend named after
-- the pool the client asked for in X-Backend-Pool. An unknown or missing
-- pool is no opinion (nil): the configured strategy picks.

local pools = {
  ["gpu-a"] = "vllm-a100",
  ["gpu-b"] = "vllm-h100",
  ["cpu"] = "llamacpp-cpu",
}

function on_route(req)
  local pool = req.headers:get("X-Backend-Pool")
  if pool == nil then
    return nil
  end
  return pools[string.lower(pool)]
end
