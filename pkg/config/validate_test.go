package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_NEWLINE_KEY", "sk-backend-1\n")
	tests := []struct {
		name string
		yaml string // appended to minimal
		want []string
	}{
		{"fine", "", nil},
		{
			"bad defaults said once, not for each key that takes them",
			"auth:\n  defaults: { quota_reset_period: hourly, total_quota: -1 }\napi_keys:\n  - key: sk-a\n    id: a\n  - key: sk-b\n    id: b\n    total_quota: -2\n",
			[]string{
				`c.yaml:4: key auth.defaults.quota_reset_period: want one of daily, weekly, monthly, never, got "hourly"`,
				`c.yaml:4: key auth.defaults.total_quota: must not be negative, got -1`,
				`c.yaml:10: key api_keys[1].total_quota: must not be negative, got -2`,
			},
		},
		{
			"listeners on one port",
			"listen: \"0.0.0.0:9100\"\nadmin: { listen: \"127.0.0.1:9100\", token: tok-a }\nnats: { embedded_listen: \":9100\" }\n",
			[]string{
				`c.yaml:4: key admin.listen: "127.0.0.1:9100" takes the port of listen ("0.0.0.0:9100"): give each listener its own`,
				`c.yaml:5: key nats.embedded_listen: ":9100" takes the port of listen ("0.0.0.0:9100"): give each listener its own`,
				`c.yaml:5: key nats.embedded_listen: ":9100" takes the port of admin.listen ("127.0.0.1:9100"): give each listener its own`,
			},
		},
		{
			"one port spelled two ways",
			"listen: \"localhost:9100\"\nadmin: { listen: \"127.0.0.1:09100\", token: tok-a }\n",
			[]string{`c.yaml:4: key admin.listen: "127.0.0.1:09100" takes the port of listen ("localhost:9100"): give each listener its own`},
		},
		{"listeners apart", "listen: \"127.0.0.1:9100\"\nadmin: { listen: \"127.0.0.2:9100\", token: tok-a }\nnats: { embedded_listen: \"127.0.0.1:0\" }\n", nil},
		{
			"fallback naming no backend",
			"routing:\n  fallback:\n    - primary: http://b:8000\n      fallback: [http://nowhere:1]\n    - primary: ghost\n      fallback: [http://b:8000/]\n",
			[]string{
				`c.yaml:6: key routing.fallback[0].fallback[0]: "http://nowhere:1" names no configured backend`,
				`c.yaml:7: key routing.fallback[1].primary: "ghost" names no configured backend`,
			},
		},
		{
			"key id with a dot",
			"api_keys:\n  - key: sk-a\n    id: team.a\n",
			[]string{`c.yaml:5: key api_keys[0].id: want 1 to 64 letters, digits, '_' or '-' (no '.': the id is a token of event subjects), got "team.a"`},
		},
		{
			"key ids the gateway gives keyless requests",
			"api_keys:\n  - key: sk-a\n    id: unauthenticated\n  - key: sk-b\n    id: anonymous\n",
			[]string{
				`c.yaml:5: key api_keys[0].id: "unauthenticated" is the id the gateway gives requests without a key of their own; choose another`,
				`c.yaml:7: key api_keys[1].id: "anonymous" is the id the gateway gives requests without a key of their own; choose another`,
			},
		},
		{
			"retry on nothing",
			"routing:\n  retry:\n    enabled: true\n    on: []\n",
			[]string{`c.yaml:6: key routing.retry.on: an empty list would retry nothing; leave on out to retry on all of connect, 429, 5xx, timeout, or write enabled: false`},
		},
		{
			"limits past 2^53",
			"auth:\n  defaults: { total_quota: 9007199254740993 }\nrate_limit:\n  per_key: { tokens_per_minute: 9223372036854775807 }\n",
			[]string{
				`c.yaml:4: key auth.defaults.total_quota: at most 9007199254740992 (2^53), got 9007199254740993`,
				`c.yaml:6: key rate_limit.per_key.tokens_per_minute: at most 9007199254740992 (2^53), got 9223372036854775807`,
			},
		},
		{
			"sizes past 2^53",
			"server: { max_body_bytes: 9223372036854775807 }\nlogging: { max_capture_bytes: 9223372036854775807 }\n",
			[]string{
				`c.yaml:3: key server.max_body_bytes: at most 9007199254740992 (2^53), got 9223372036854775807`,
				`c.yaml:4: key logging.max_capture_bytes: at most 9007199254740992 (2^53), got 9223372036854775807`,
			},
		},
		{
			"lease_ttl of milliseconds",
			"rate_limit:\n  lease_ttl: 2ms\n",
			[]string{`c.yaml:4: key rate_limit.lease_ttl: want at least 1s (requests renew their lease every lease_ttl/2), got 2ms`},
		},
		{
			"retry settings without enabled",
			"routing:\n  retry:\n    max_retries: 3\n    initial_wait: 1s\n",
			[]string{`c.yaml:5: key routing.retry.max_retries: retries are off unless routing.retry.enabled is true; write enabled: true (or enabled: false to keep them off)`},
		},
		{
			"retry settings kept off",
			"routing:\n  retry:\n    enabled: false\n    max_retries: 3\n",
			nil,
		},
		{
			"backend header value with a newline",
			"    headers: { Authorization: \"Bearer ${LLMPROXY_TEST_NEWLINE_KEY}\", X-Ok: \"a\\tb\" }\n",
			[]string{`c.yaml:3: key backends[0].headers.Authorization: the value has a line break or another control character`},
		},
		{
			"backend framing header",
			"    headers: { Content-Length: \"5\", transfer-encoding: chunked, Host: vhost.internal }\n",
			[]string{
				`c.yaml:3: key backends[0].headers.Content-Length: the gateway frames each request itself; this header cannot be set`,
				`c.yaml:3: key backends[0].headers.transfer-encoding: the gateway frames each request itself; this header cannot be set`,
			},
		},
		{
			"backend Host not a host",
			"    headers: { Host: \"a b\", Expect: 100-continue }\n",
			[]string{
				`c.yaml:3: key backends[0].headers.Expect: the gateway frames each request itself; this header cannot be set`,
				`c.yaml:3: key backends[0].headers.Host: not a host (a name or address, with an optional :port): "a b"`,
			},
		},
		{
			"backend Host with a port",
			"    headers: { Host: \"vhost.internal:8443\" }\n",
			nil,
		},
		{
			"url ports",
			"  - url: http://c:99999\nwebhooks:\n  - url: https://h:0/x\nnats:\n  url: nats://n1:4222,nats://n2:70000\n",
			[]string{
				`c.yaml:3: key backends[1].url: port 99999 is not 1 to 65535, in "http://c:99999"`,
				`c.yaml:5: key webhooks[0].url: port 0 is not 1 to 65535, in "https://h:0/…"`,
				`c.yaml:7: key nats.url: port 70000 is not 1 to 65535, in "nats://n2:70000"`,
			},
		},
		{
			"backend named as another's url",
			"    name: http://c:1\n  - url: http://c:1\n  - url: http://d:1\n    name: http://c:1\n",
			[]string{
				`c.yaml:4: key backends[1].url: backends[0] is named "http://c:1", this backend's url, which names it when it has no name; give one of them another name`,
				`c.yaml:6: key backends[2].name: duplicate backend name "http://c:1" (also backends[0])`,
			},
		},
		{
			"unknown strategy",
			"routing:\n  load_balance_strategy: random\n",
			[]string{`c.yaml:4: key routing.load_balance_strategy: want one of round_robin, weighted, least_connections, latency_based, least_load, got "random"`},
		},
		{
			"bad CIDR",
			"trusted_proxies: [10.0.0.0/8, \"fd00::/8\", 10.1.2.3, 10.0.0.0/33]\napi_keys:\n  - key: sk-a\n    allowed_ips: [\"::1\", 192.168.1.300/24]\n",
			[]string{
				`c.yaml:3: key trusted_proxies[3]: want a CIDR such as 10.0.0.0/8 or an IP address, got "10.0.0.0/33"`,
				`c.yaml:6: key api_keys[0].allowed_ips[1]: want a CIDR`,
			},
		},
		{
			"backend urls and weights",
			"  - url: vllm:8000\n  - url: ftp://x/\n  - url: http://c:1\n    weight: -1\n",
			[]string{
				`c.yaml:3: key backends[1].url: want an absolute http:// or https:// URL, got "vllm:8000"`,
				`c.yaml:4: key backends[2].url: want an absolute http:// or https:// URL`,
				`c.yaml:6: key backends[3].weight: must not be negative, got -1`,
			},
		},
		{
			"backend url with a query",
			"  - url: http://c:1/llm?api_key=sk-backend-1\n  - url: http://d:1#x\n  - url: http://e:1/?\n",
			[]string{
				`c.yaml:3: key backends[1].url: want no query or fragment: requests keep the client's query, so this one would never be sent`,
				`c.yaml:4: key backends[2].url: want no query or fragment`,
				`c.yaml:5: key backends[3].url: want no query or fragment`,
			},
		},
		{
			"backend url that is an SDK's base URL",
			"  - url: http://c:1/v1\n  - url: http://d:1/llm/v1/\n  - url: http://e:1/api/v1/namespaces/llm/services/vllm:8000/proxy\n  - url: http://f:1//V1//\n  - url: http://g:1/v1/.\n  - url: http://h:1/v1/chat/completions\n",
			[]string{
				`c.yaml:3: key backends[1].url: holds /v1, which the client's path (/v1/chat/completions) already starts with`,
				`c.yaml:4: key backends[2].url: holds /v1`,
				`c.yaml:6: key backends[4].url: holds /v1`,
				`c.yaml:7: key backends[5].url: holds /v1`,
				`c.yaml:8: key backends[6].url: holds /v1`,
			},
		},
		{
			"redis sentinel",
			"redis:\n  url: redis://r:6379\n  sentinel: { master_name: m, addrs: [\"s1:26379\", \"u:pw@s2:26379\", s3], db: -1 }\n",
			[]string{
				`c.yaml:5: key redis.sentinel: set redis.url, redis.addrs (a cluster) or redis.sentinel, one of them`,
				`key redis.sentinel.addrs[1]: want host:port; a password goes in redis.sentinel.password`,
				`key redis.sentinel.addrs[2]: want host:port, got "s3"`,
				`key redis.sentinel.db: want a database number, 0 or more, got -1`,
			},
		},
		{
			"redis wait_replicas",
			"redis:\n  addrs: [\"r1:6379\"]\n  wait_replicas: 1\n",
			[]string{
				`c.yaml:5: key redis.wait_replicas: is for a single Redis or redis.sentinel's master, not a Redis Cluster`,
			},
		},
		{
			"redis sentinel without its master or its sentinels",
			"redis:\n  sentinel: { addrs: [\"s1:26379\"] }\nrate_limit:\n  storage: redis\n",
			[]string{
				`c.yaml:4: key redis.sentinel: needs master_name, the name of the master the sentinels watch`,
				`rate_limit.storage: "redis" needs redis.url`,
			},
		},
		{
			"storages",
			"auth:\n  storage: ldap\nrate_limit:\n  storage: redis\n",
			[]string{
				`c.yaml:4: key auth.storage: want one of file, redis, got "ldap"`,
				`c.yaml:6: key rate_limit.storage: "redis" needs redis.url (or redis.addrs, or redis.sentinel) to say where Redis is`,
			},
		},
		{
			// What the Redis client would refuse at start.
			"redis url options",
			"redis:\n  url: redis://:hunter2@r:6379/abc\n",
			[]string{`c.yaml:4: key redis.url: invalid database number: "abc"`},
		},
		{
			"redis url unknown option",
			"redis:\n  url: redis://:hunter2@r:6379/0?timeout=1s&pool=3\n",
			[]string{`c.yaml:4: key redis.url: unexpected option: pool, timeout`},
		},
		{
			"redis url with options",
			"redis:\n  url: rediss://:hunter2@r:6379/2?dial_timeout=3s&pool_size=20\n",
			nil,
		},
		{
			"redis cluster addrs satisfy storage redis",
			"redis:\n  addrs: [r1:6379, r2:6379]\nrate_limit:\n  storage: redis\n",
			nil,
		},
		{
			"url schemes",
			"nats:\n  url: nats://n1:4222,http://n2:4222\nredis:\n  url: http://u:secret@r:6379\nlogging:\n  level: loud\n",
			[]string{
				`c.yaml:4: key nats.url: want nats://host:port or tls://host:port`,
				`c.yaml:6: key redis.url: want redis://host:port or rediss://host:port, got "http://xxxxx@r:6379"`,
				`c.yaml:8: key logging.level: want one of debug, info, warn, error, got "loud"`,
			},
		},
		{
			"api keys",
			"api_keys:\n" +
				"  - key: sk-a\n    key_sha256: " + strings.Repeat("a", 64) + "\n" +
				"  - name: nothing\n" +
				"  - key_sha256: abc\n" +
				"  - key: sk-b\n    status: paused\n    quota_reset_period: hourly\n    expires_at: 2026-12-31\n    total_quota: -5\n" +
				"  - key: sk-b\n" +
				"  - key: sk-c\n    id: key-1\n  - key: sk-d\n    id: key-1\n",
			[]string{
				`c.yaml:5: key api_keys[0].key_sha256: give key or key_sha256, not both`,
				`c.yaml:6: key api_keys[1].key: every key needs key (the secret) or key_sha256`,
				`c.yaml:7: key api_keys[2].key_sha256: want 64 hex digits`,
				`c.yaml:9: key api_keys[3].status: want one of active, disabled, got "paused"`,
				`c.yaml:10: key api_keys[3].quota_reset_period: want one of daily, weekly, monthly, never, got "hourly"`,
				`c.yaml:11: key api_keys[3].expires_at: want an RFC 3339 time`,
				`c.yaml:12: key api_keys[3].total_quota: must not be negative, got -5`,
				`c.yaml:13: key api_keys[4].key: same secret as api_keys[3]`,
				`c.yaml:17: key api_keys[6].id: duplicate key id "key-1" (also api_keys[5])`,
			},
		},
		{
			"negative numbers and retry",
			"routing:\n  retry:\n    enabled: true\n    max_retries: -1\n    multiplier: 0.5\nrate_limit:\n  per_key:\n    tokens_per_minute: -1\n  global:\n    requests_per_second: -3\n",
			[]string{
				`c.yaml:6: key routing.retry.max_retries: must not be negative, got -1`,
				`c.yaml:7: key routing.retry.multiplier: want at least 1`,
				`c.yaml:10: key rate_limit.per_key.tokens_per_minute: must not be negative, got -1`,
				`c.yaml:12: key rate_limit.global.requests_per_second: must not be negative, got -3`,
			},
		},
		{
			"hooks",
			"usage_hook:\n  enabled: true\nwebhooks:\n  - url: billing.internal/x\n  - url: https://a/b\n    name: \"has space\"\n    max_attempts: 0\n    backoff_max: 500ms\n  - url: https://a/c\n    backoff_max: 0s\n",
			[]string{
				`c.yaml:4: key usage_hook.enabled: the usage hook is enabled but has no url`,
				`c.yaml:6: key webhooks[0].url: want an absolute http:// or https:// URL`,
				`c.yaml:8: key webhooks[1].name: want letters, digits`,
				`c.yaml:9: key webhooks[1].max_attempts: want at least 1, got 0`,
				`c.yaml:10: key webhooks[1].backoff_max: want at least 1s (the first retry waits up to 1s), got 500ms`,
				`c.yaml:12: key webhooks[2].backoff_max: want more than 0; leave the key out for the default, 5m0s`,
			},
		},
		{
			"health check paths",
			"    health_check_path: health\n  - url: http://c:1\nhealth_check:\n  enabled: true\n",
			[]string{
				`key backends[0].health_check_path: want a path starting with /, such as /health, got "health"`,
				`key health_check.path: enabled health checks need a path starting with /, such as /health (or a health_check_path on backends[1])`,
			},
		},
		{
			"only some backends with their own health check path",
			"    health_check_path: /api/version\n  - url: http://c:1\n",
			nil,
		},
		{
			"a backend's own health check path",
			"    health_check_path: /api/version\nhealth_check:\n  enabled: true\n",
			nil,
		},
		{
			"auth on with no keys",
			"auth:\n  enabled: true\n",
			[]string{`c.yaml:4: key auth.enabled: auth is enabled with file storage but api_keys lists no key`},
		},
		{
			"admin without token",
			"admin:\n  listen: 127.0.0.1:8001\n  token: ${LLMPROXY_TEST_UNSET_TOKEN:-}\n",
			[]string{`c.yaml:5: key admin.token: the admin API needs a token`},
		},
		{
			"a written 0 that would silently be the default",
			"    first_byte_timeout: 0s\nserver: { max_body_bytes: 0, drain_timeout: 0s }\nhealth_check: { cooldown: 0s, failure_threshold: 0 }\n" +
				"nats: { stream: { max_age: 0s, replicas: 0 } }\nrate_limit: { lease_ttl: 0s }\nwebhooks:\n  - { url: https://a/b, max_age: 0s }\n",
			[]string{
				`c.yaml:3: key backends[0].first_byte_timeout: want more than 0; leave the key out for the default, 1m0s`,
				`c.yaml:4: key server.max_body_bytes: want more than 0; leave the key out for the default, 10485760`,
				`c.yaml:4: key server.drain_timeout: want more than 0; leave the key out for the default, 30s`,
				`c.yaml:5: key health_check.failure_threshold: want more than 0; leave the key out for the default, 3`,
				`c.yaml:5: key health_check.cooldown: want more than 0; leave the key out for the default, 10s`,
				`c.yaml:6: key nats.stream.max_age: want more than 0; leave the key out for the default, 168h0m0s`,
				`c.yaml:6: key nats.stream.replicas: want more than 0; leave the key out for the default, 1`,
				`c.yaml:7: key rate_limit.lease_ttl: want more than 0; leave the key out for the default, 2m0s`,
				`c.yaml:9: key webhooks[0].max_age: want more than 0; leave the key out for the default, 24h0m0s`,
			},
		},
		{
			"a stream kept shorter than its duplicate window",
			"nats: { stream: { max_age: 1m } }\n",
			[]string{`c.yaml:3: key nats.stream.max_age: want at least 2m0s (the stream's duplicate window, which JetStream wants no longer than its max age), got 1m0s`},
		},
		{
			"a written 0 read_timeout",
			"    read_timeout: 0s\n",
			[]string{`c.yaml:3: key backends[0].read_timeout: want more than 0; leave the key out for the default, 5m0s`},
		},
		{
			"admin token with a trailing newline",
			"admin:\n  listen: 127.0.0.1:8001\n  token: ${LLMPROXY_TEST_NEWLINE_KEY}\n",
			[]string{`c.yaml:5: key admin.token: the token has a line break, another control character or spaces around it`},
		},
		{
			"api keys with a trailing newline, spaces or a control character",
			"api_keys:\n  - key: ${LLMPROXY_TEST_NEWLINE_KEY}\n  - key: \" sk-b \"\n  - key: \"sk-c\\x01d\"\n  - key: \"sk d\"\n",
			[]string{
				`c.yaml:4: key api_keys[0].key: the key has a line break, another control character or spaces around it`,
				`c.yaml:5: key api_keys[1].key: the key has a line break, another control character or spaces around it`,
				`c.yaml:6: key api_keys[2].key: the key has a line break, another control character or spaces around it`,
			},
		},
		{
			"webhook secrets with a trailing newline",
			"webhooks:\n  - url: http://hook:9000/a\n    secret: ${LLMPROXY_TEST_NEWLINE_KEY}\n  - url: http://hook:9000/b\n    secret: \" s\"\n" +
				"usage_hook:\n  url: http://hook:9000/u\n  secret: ${LLMPROXY_TEST_NEWLINE_KEY}\n",
			[]string{
				`c.yaml:5: key webhooks[0].secret: the secret has a line break or spaces around it`,
				`c.yaml:7: key webhooks[1].secret: the secret has a line break or spaces around it`,
				`c.yaml:10: key usage_hook.secret: the secret has a line break or spaces around it`,
			},
		},
		{
			"a model only standbys serve",
			"    models: [m]\n  - url: http://spare:8000\n    weight: 0\n    models: [m, x]\n  - url: http://any:8000\n    weight: 0\n" +
				"routing:\n  fallback: [{primary: http://b:8000, fallback: [http://spare:8000, http://any:8000]}]\n",
			[]string{`c.yaml:6: key backends[1].models[1]: "x" is served only by backends with weight 0`},
		},
		{
			"a standby serving what a weighted backend serves",
			"    models: [m]\n  - url: http://spare:8000\n    weight: 0\n    models: [m]\n  - url: http://any:8000\n    weight: 0\n",
			nil,
		},
		{
			"a standby serving a weighted backend's model with Ollama's :latest",
			"    models: [m]\n  - url: http://spare:8000\n    weight: 0\n    models: [\"m:latest\"]\n",
			nil,
		},
		{
			"a header given twice in different cases",
			"    headers: { Authorization: \"Bearer a\", authorization: \"Bearer b\", X-A: \"1\" }\n",
			[]string{`c.yaml:3: key backends[0].headers.authorization: the same header as "Authorization" (header names are not case-sensitive)`},
		},
		{
			"a burst written 0, and one without a rate",
			"rate_limit: { global: { requests_per_second: 5, burst_size: 0 } }\n",
			[]string{`c.yaml:3: key rate_limit.global.burst_size: want more than 0; leave the key out for the default, 5`},
		},
		{
			"a burst without a rate, a Redis password without a Redis",
			"rate_limit: { global: { burst_size: 10 } }\nredis: { password: pw-1 }\n",
			[]string{
				`c.yaml:3: key rate_limit.global.burst_size: a burst of the global limit, which has no rate`,
				`c.yaml:4: key redis.password: for the Redis that redis.url, redis.addrs or redis.sentinel names; there is none`,
			},
		},
		{
			"a standby that serves none of its primary's models",
			"    models: [m1]\n  - url: http://spare:8000\n    name: spare\n    models: [m2]\n  - url: http://any:8000\n    name: any\n" +
				"routing:\n  fallback: [{primary: http://b:8000, fallback: [spare, any]}]\n",
			[]string{`c.yaml:10: key routing.fallback[0].fallback[0]: "spare" serves none of the primary's models [m1] (its models: [m2])`},
		},
		{
			"a listener on no IPv4 address",
			"listen: \"256.1.1.1:80\"\nadmin: { listen: \"10.0.0.1:81\", token: tok-a }\n",
			[]string{`c.yaml:3: key listen: "256.1.1.1" is not an IPv4 address`},
		},
		{
			"missing lua script",
			"lua:\n  scripts: [hooks/none.lua]\n",
			[]string{`c.yaml:4: key lua.scripts[0]: cannot read script`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(minimal+tt.yaml), "c.yaml")
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error:\n%v", err)
				}
				return
			}
			errs := mustErrors(t, err)
			if len(errs.List) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs.List), len(tt.want), err)
			}
			for i, w := range tt.want {
				if got := errs.List[i].Error(); !strings.Contains(got, w) {
					t.Errorf("error %d = %q, want it to contain %q", i, got, w)
				}
			}
		})
	}
}

func TestValidateNeverShowsSecrets(t *testing.T) {
	y := minimal + "redis:\n  url: redis://:hunter2@/0\n  addrs: [\"redis://:redis-secret-1@r1:6379\"]\napi_keys:\n  - key: sk-secret-1\n  - key: sk-secret-1\n" +
		"nats:\n  url: nats://n1:4222,http://nats-token-1@n2:4222\n" +
		"logging:\n  postgres:\n    url: mysql://db/x?password=pg-secret-1\n" +
		"usage_hook:\n  url: hooks.slack.com/services/T0/B0/slack-secret-1\n" +
		"webhooks:\n  - url: ftp://u:ftp-secret-1@h/p\n  - url: hook-user:hook-secret-1@h\n"
	_, err := Parse([]byte(y), "c.yaml")
	errs := mustErrors(t, err)
	want := []string{`got "http://xxxxx@n2:4222"`, `got "mysql://db/…"`, `got "hooks.slack.com/…"`, `got "ftp://xxxxx@h/…"`, `got "xxxxx@h"`, `redis.addrs[0]: want host:port; a password goes in redis.password`}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("no error has %s:\n%v", w, err)
		}
	}
	// And redis.url, redis.url with redis.addrs, the same key twice.
	if len(errs.List) != len(want)+3 {
		t.Errorf("%d errors, want %d:\n%v", len(errs.List), len(want)+3, err)
	}
	for _, s := range []string{"hunter2", "hook-user", "sk-secret-1", "nats-token-1", "pg-secret-1", "slack-secret-1", "ftp-secret-1", "hook-secret-1", "redis-secret-1"} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error shows %q:\n%v", s, err)
		}
	}
}

func TestLuaScriptsRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "hooks"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "hooks", "tenant.lua")
	if err := os.WriteFile(script, []byte("function on_request() end\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "llmproxy.yaml")
	if err := os.WriteFile(cfg, []byte(minimal+"lua:\n  scripts: [hooks/tenant.lua]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Lua.Scripts[0] != script {
		t.Errorf("script path %q, want %q", c.Lua.Scripts[0], script)
	}
	if c.Lua.Timeout.D().Milliseconds() != 50 {
		t.Errorf("lua timeout %v", c.Lua.Timeout.D())
	}
}

func TestValidateBuiltInGo(t *testing.T) {
	c := &Config{Backends: []Backend{{URL: "http://b:1", Weight: 1}}}
	c.Routing.Retry.Multiplier = 2
	c.NATS.Stream.Replicas = 1
	c.HealthCheck = HealthCheck{HealthyThreshold: 1, UnhealthyThreshold: 1, FailureThreshold: 1}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Backends = nil
	err := c.Validate()
	if errs := mustErrors(t, err); errs.List[0].Path != "backends" || errs.List[0].Line != 0 {
		t.Errorf("got %v", err)
	}
}

// TestBackendReadTimeout: backends[].read_timeout is 5m when left out and
// kept as written otherwise.
func TestBackendReadTimeout(t *testing.T) {
	c, err := Parse([]byte("backends:\n  - url: http://a:8000\n  - url: http://b:8000\n    read_timeout: 90s\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Backends[0].ReadTimeout.D(); got != 5*time.Minute {
		t.Errorf("left out: read_timeout %v, want 5m", got)
	}
	if got := c.Backends[1].ReadTimeout.D(); got != 90*time.Second {
		t.Errorf("written 90s: read_timeout %v", got)
	}
}

// TestNegativeWeightIsOneError: a backend list whose only weight is
// negative gets that error alone, not also "every backend has weight 0",
// which is not what the file says.
func TestNegativeWeightIsOneError(t *testing.T) {
	_, err := Parse([]byte("backends:\n  - url: http://a:1\n    weight: -1\n"), "w.yaml")
	errs := mustErrors(t, err)
	if len(errs.List) != 1 || !strings.Contains(errs.List[0].Error(), "w.yaml:3: key backends[0].weight: must not be negative, got -1") {
		t.Fatalf("errors:\n%v\nwant only the negative weight's", err)
	}
}

// TestValidateShowsNoValueOfAKeywordString: a libpq keyword/value string
// where a URL belongs is refused showing its keywords, not its password.
func TestValidateShowsNoValueOfAKeywordString(t *testing.T) {
	y := minimal + "logging:\n  postgres:\n    url: \"host=db user=app password='pg dsn-secret-1 horse=battery\\\\' staple' sslpassword=pw\\\\ hunter2=x dbname=llm\"\n"
	_, err := Parse([]byte(y), "c.yaml")
	if err == nil {
		t.Fatal("a keyword/value string was taken for a URL")
	}
	if strings.Contains(err.Error(), "dsn-secret-1") || strings.Contains(err.Error(), "app") || strings.Contains(err.Error(), "horse") || strings.Contains(err.Error(), "staple") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error shows a value: %v", err)
	}
	if want := `got "host=… user=… password=… sslpassword=… dbname=…"`; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q, want it to contain %s", err, want)
	}
}
