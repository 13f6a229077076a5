package auth

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
)

func TestCheckModel(t *testing.T) {
	limited := &Key{AllowedModels: map[string]bool{"qwen": true, "llama": true}}
	open := &Key{}
	// A key of 1,000 models: a refusal names the first 20 and a count,
	// not 10 KB of names.
	many := &Key{AllowedModels: map[string]bool{}}
	for i := range 1000 {
		many.AllowedModels[fmt.Sprintf("m%04d", i)] = true
	}
	cases := []struct {
		name  string
		key   *Key
		model string
		code  string // "" = allowed
		says  []string
	}{
		{"allowed model", limited, "qwen", "", nil},
		{"other model", limited, "gpt-4", "model_not_allowed", []string{"gpt-4", "llama, qwen"}},
		{"no model on a limited key", limited, "", "model_not_allowed", []string{"only use the models llama, qwen", "must name one"}},
		{"any model on an open key", open, "gpt-4", "", nil},
		{"no model on an open key", open, "", "", nil},
		{"other model on a key of many", many, "x", "model_not_allowed", []string{"allowed: m0000, m0001", "m0019 and 980 more"}},
		// Ollama's name and name:latest are one model, either way round.
		{"an allowed model's :latest", limited, "qwen:latest", "", nil},
		{"the bare name of an allowed :latest", &Key{AllowedModels: map[string]bool{"mistral:latest": true}}, "mistral", "", nil},
		{"another tag of an allowed model", limited, "qwen:7b", "model_not_allowed", nil},
		{"a tag's bare name is not every tag", &Key{AllowedModels: map[string]bool{"qwen:7b": true}}, "qwen", "model_not_allowed", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := c.key.CheckModel(c.model)
			if c.code == "" {
				if e != nil {
					t.Fatalf("refused: %v", e)
				}
				return
			}
			if e == nil || e.Status != 403 || e.Code != c.code || e.Type != "permission_error" {
				t.Fatalf("got %+v, want 403 %s", e, c.code)
			}
			if len(e.Message) > 500 {
				t.Errorf("message of %d bytes", len(e.Message))
			}
			for _, s := range c.says {
				if !strings.Contains(e.Message, s) {
					t.Errorf("message %q does not say %q", e.Message, s)
				}
			}
		})
	}
}

func TestMask(t *testing.T) {
	cases := []struct{ secret, want string }{
		{"sk-llmproxy-AbCdEfGhIjKlMnOpQrStUvWxYz012345", "sk-llmproxy-…2345"}, // made by llmproxy keys
		{"sk-llmproxy-unit-test-0042", "sk-llmproxy-…0042"},
		{"sk-llmproxy-wrong-9999", "sk-llmproxy-…999"},
		{"sk-llmproxy-demo-123", "sk-llmproxy-…"},
		{"sk-llmproxy-", "sk-llmproxy-…"},
		{"0123456789", "…789"},
		{"sk-nope-123456789", "…6789"},
		{"team-a-0123456789abcdef", "…cdef"},
		{"sk-proj-0123456789abcdefghijklmnopqrstuvwxyz", "…wxyz"},
		{"12345678", "…"},
		{"abc", "…"},
		{"", "…"},
		{"secret-passwörd", "…örd"},
		{"secret-passwordö", "…rdö"},
	}
	for _, c := range cases {
		got := Mask(c.secret)
		if got != c.want {
			t.Errorf("Mask(%q) = %q, want %q", c.secret, got, c.want)
		}
		// Never more than a third of what is secret, nor more than four
		// characters of it.
		shown := len(got) - len("…")
		if strings.HasPrefix(c.secret, "sk-llmproxy-") {
			shown -= len("sk-llmproxy-")
		}
		secret := len(strings.TrimPrefix(c.secret, "sk-llmproxy-"))
		if shown > secret/3 || shown > 4 {
			t.Errorf("Mask(%q) = %q shows %d of %d secret bytes", c.secret, got, shown, secret)
		}
	}
}

// TestCheckAllowedIPs: allowed_ips matches a client whatever form the
// operator wrote an IPv4 range or address in (IPv4, or IPv4-mapped IPv6 as
// a dual-stack listener reports it) and whatever form the client's address
// arrives in.
func TestCheckAllowedIPs(t *testing.T) {
	cases := []struct {
		name    string
		allowed string
		client  string
		ok      bool
	}{
		{"IPv4 CIDR", "10.0.0.0/8", "10.1.2.3", true},
		{"IPv4 CIDR, mapped client", "10.0.0.0/8", "::ffff:10.1.2.3", true},
		{"IPv4 CIDR, outside", "10.0.0.0/8", "11.0.0.1", false},
		{"IPv6 CIDR", "2001:db8::/32", "2001:db8::1", true},
		{"IPv6 CIDR, outside", "2001:db8::/32", "2001:db9::1", false},
		{"mapped address", "::ffff:10.1.2.3", "10.1.2.3", true},
		{"mapped CIDR", "::ffff:10.0.0.0/104", "10.1.2.3", true},
		{"mapped CIDR, mapped client", "::ffff:10.0.0.0/104", "::ffff:10.1.2.3", true},
		{"mapped CIDR, outside", "::ffff:10.0.0.0/104", "11.0.0.1", false},
		{"mapped /128", "::ffff:10.1.2.3/128", "10.1.2.3", true},
		{"all of IPv4, mapped", "::ffff:0.0.0.0/96", "192.0.2.1", true},
		{"all of IPv4, mapped, not IPv6", "::ffff:0.0.0.0/96", "2001:db8::1", false},
		{"link-local client with its zone", "fe80::/10", "fe80::1%eth0", true},
		{"link-local address with its zone", "fe80::1%eth0", "fe80::1%eth0", true},
		{"link-local client, outside", "fe80::1", "fe80::2%eth0", false},
	}
	cfg := &config.Config{}
	now := time.Now()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := FromConfig(cfg, config.APIKey{Key: "sk-test", AllowedIPs: []string{c.allowed}})
			if err != nil {
				t.Fatal(err)
			}
			e := k.Check(now, netip.MustParseAddr(c.client))
			if (e == nil) != c.ok {
				t.Fatalf("allowed_ips [%s], client %s: refused = %v, want allowed %v", c.allowed, c.client, e, c.ok)
			}
			if e != nil && (e.Status != 403 || e.Code != "ip_not_allowed") {
				t.Fatalf("refusal = %+v, want 403 ip_not_allowed", e)
			}
		})
	}
}

// TestCheckExpiry: a key is refused from its expires_at on, to the
// instant, whether it comes from the file or from Redis, where an expiry
// with a fraction of a second is kept as given.
func TestCheckExpiry(t *testing.T) {
	exp := time.Date(2027, 1, 1, 12, 0, 0, 900_000_000, time.UTC)
	file, err := FromConfig(&config.Config{}, config.APIKey{Key: "sk-test", ExpiresAt: exp.Format(time.RFC3339Nano)})
	if err != nil {
		t.Fatal(err)
	}
	fromRedis, err := FromRecord(&config.Config{}, keys.Record{Spec: keys.Spec{ID: "r", ExpiresAt: &exp}, SHA256: HashSecret("sk-r")})
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.0.0.1")
	for name, k := range map[string]*Key{"file": file, "redis": fromRedis} {
		for _, c := range []struct {
			at      time.Time
			expired bool
		}{
			{exp.Add(-time.Second), false},
			{exp.Add(-time.Nanosecond), false},
			{exp, true},
			{exp.Add(time.Second), true},
		} {
			e := k.Check(c.at, ip)
			if (e != nil) != c.expired || e != nil && e.Code != "key_expired" {
				t.Errorf("%s key expiring at %s, checked at %s: %v, want expired %v", name, exp.Format(time.RFC3339Nano), c.at.Format(time.RFC3339Nano), e, c.expired)
			}
		}
	}
}
