module github.com/llmproxy/llmproxy/bench

go 1.26

require github.com/llmproxy/llmproxy/pkg v0.0.0

replace github.com/llmproxy/llmproxy/pkg => ../pkg
