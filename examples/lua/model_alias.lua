-- model_alias.lua: on_request maps public model names to the models the
-- backends serve, and sets a default max_tokens on OpenAI's generation
-- paths when the client sent none.

local aliases = {
  ["gpt-4o"] = "qwen2.5-72b",
  ["gpt-4o-mini"] = "qwen2.5-7b",
}

local default_max_tokens = 512

-- The paths that generate and take max_tokens (not embeddings, model
-- lists or a model's details; Anthropic's requires it already).
local generates = {
  ["/v1/chat/completions"] = true,
  ["/v1/completions"] = true,
}

function on_request(req)
  local model = req.body:get("model")
  local target = aliases[model]
  if target then
    req.body:set("model", target)
    req.headers:set("X-Model-Alias", model)
  end
  if generates[req.path] and req.body:get("max_tokens") == nil and req.body:get("max_completion_tokens") == nil then
    req.body:set("max_tokens", default_max_tokens)
  end
  return nil
end
