package keys

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// testRedis returns a client for REDIS_URL (default
// redis://127.0.0.1:6379/15) and a key prefix unique to the test, whose keys
// are deleted when it ends. Without Redis the test is skipped, or fails when
// CI=true.
func testRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	url := os.Getenv("REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/15"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("REDIS_URL %q: %v", url, err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis at %s unreachable (CI=true requires it): %v", url, err)
		}
		t.Skipf("redis at %s unreachable, skipping: %v", url, err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "llmproxy-test:keys:" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := rdb.Keys(ctx, prefix+":*").Result()
		if len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
	})
	return rdb, prefix
}

func ptr[T any](v T) *T { return &v }

func TestNewSecret(t *testing.T) {
	re := regexp.MustCompile("^" + SecretPattern + "$")
	seen := map[string]bool{}
	for range 1000 {
		s := NewSecret()
		if !re.MatchString(s) {
			t.Fatalf("secret %q does not match %s", s, re)
		}
		if seen[s] {
			t.Fatalf("secret %q made twice", s)
		}
		seen[s] = true
	}
}

func TestSpecValidate(t *testing.T) {
	for name, s := range map[string]Spec{
		"name with a line break":         {Name: "evil\nkey_fake  FAKE  x  active"},
		"user id with an escape":         {UserID: "u\x1b[31m"},
		"name not UTF-8":                 {Name: "a\xffb"},
		"name with a line separator":     {Name: "a\u2028b"},
		"name with a direction override": {Name: "a\u202eb"},
		"limits off, and a limit":        {Limits: &Limits{Enabled: ptr(false), RequestsPerMinute: ptr[int64](5)}},
		"name too long":                  {Name: strings.Repeat("n", 257)},
		"bad id":                         {ID: "a{b}"},
		"id with a dot":                  {ID: "team.a"},
		"bad status":                     {Status: "paused"},
		"negative quota":                 {TotalQuota: ptr[int64](-1)},
		"quota past 2^53":                {TotalQuota: ptr[int64](1<<53 + 1)},
		"tpm past 2^53":                  {Limits: &Limits{TokensPerMinute: ptr[int64](1<<53 + 1)}},
		"bad period":                     {QuotaResetPeriod: "hourly"},
		"bad ip":                         {AllowedIPs: []string{"10.0.0.0/33"}},
		"negative limit":                 {Limits: &Limits{MaxConcurrent: ptr[int64](-1)}},
		"rps NaN":                        {Limits: &Limits{RequestsPerSecond: ptr(math.NaN())}},
		"rps infinite":                   {Limits: &Limits{RequestsPerSecond: ptr(math.Inf(1))}},
		"empty model":                    {AllowedModels: []string{"qwen", " "}},
		"id of no key":                   {ID: "unauthenticated"},
		"id of auth off":                 {ID: "anonymous"},
	} {
		if err := s.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
	// A bad limit is named.
	for field, l := range map[string]*Limits{
		"limits.requests_per_minute -1":  {RequestsPerMinute: ptr[int64](-1)},
		"limits.max_concurrent -2":       {MaxConcurrent: ptr[int64](-2)},
		"limits.requests_per_second NaN": {RequestsPerSecond: ptr(math.NaN())},
	} {
		if err := (Spec{Limits: l}).Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate = %v, want it to name %s", err, field)
		}
	}
	ok := Spec{ID: "team-a_1", Name: "Équipe A — 東京", UserID: strings.Repeat("u", 256), Status: "disabled", TotalQuota: ptr[int64](0), QuotaResetPeriod: "daily",
		AllowedIPs: []string{"10.0.0.0/8", "2001:db8::/32", "192.168.1.7", "::1"}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate(%+v) = %v", ok, err)
	}
}

// TestRecordAPIKeyCapture: a record's capture_response reaches the config
// key the gateway resolves, as a file key's does; unset keeps the
// configured default.
func TestRecordAPIKeyCapture(t *testing.T) {
	for _, c := range []*bool{nil, ptr(true), ptr(false)} {
		k := Record{Spec: Spec{ID: "k", CaptureResponse: c}, SHA256: "ab"}.APIKey(config.PerKeyLimits{})
		if (k.CaptureResponse == nil) != (c == nil) || c != nil && *k.CaptureResponse != *c {
			t.Errorf("capture_response %v: APIKey has %v", c, k.CaptureResponse)
		}
	}
}

func TestRecordAPIKeyMergesLimits(t *testing.T) {
	perKey := config.PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 5000, MaxConcurrent: 5}
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Record{Spec: Spec{ID: "k", Status: "active", ExpiresAt: &exp, Limits: &Limits{MaxConcurrent: ptr[int64](2), TokensPerMinute: ptr[int64](0)}}, SHA256: "ab"}
	k := r.APIKey(perKey)
	if k.Limits == nil || k.Limits.RequestsPerMinute != 100 || k.Limits.TokensPerMinute != 0 || k.Limits.MaxConcurrent != 2 || !k.Limits.IsEnabled() {
		t.Fatalf("Limits = %+v; want rpm 100 kept, tpm 0 and max_concurrent 2 overridden, enabled", k.Limits)
	}
	if k.ExpiresAt != "2027-01-01T00:00:00Z" || k.KeySHA256 != "ab" || k.Key != "" {
		t.Fatalf("APIKey = %+v", k)
	}
	if k := (Record{}).APIKey(perKey); k.Limits != nil {
		t.Fatalf("no overrides: Limits = %+v, want nil (per_key applies)", k.Limits)
	}
	// With per_key switched off, a key has only its own overrides.
	off := false
	perKey.Enabled = &off
	if k := r.APIKey(perKey); k.Limits == nil || *k.Limits != (config.PerKeyLimits{Enabled: k.Limits.Enabled, MaxConcurrent: 2}) || !k.Limits.IsEnabled() {
		t.Fatalf("per_key off: Limits = %+v; want max_concurrent 2 alone, enabled", k.Limits)
	}
	// enabled: false frees the key of every limit, per_key's and its own.
	perKey.Enabled = nil
	r.Limits.Enabled = &off
	if k := r.APIKey(perKey); k.Limits == nil || k.Limits.IsEnabled() {
		t.Fatalf("limits.enabled false: Limits = %+v; want none enabled", k.Limits)
	}
}

func TestStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testRedis(t)
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	spec := Spec{Name: "alice laptop", UserID: "alice", TotalQuota: ptr[int64](100000), QuotaResetPeriod: "daily",
		AllowedIPs: []string{"10.0.0.0/8"}, AllowedModels: []string{"qwen"}, ExpiresAt: &exp,
		Limits: &Limits{RequestsPerMinute: ptr[int64](60)}}
	secret, rec, err := Create(ctx, rdb, prefix, spec)
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != "key_"+Hash(secret)[:12] || rec.Status != StatusActive || rec.SHA256 != Hash(secret) || rec.CreatedAt.IsZero() {
		t.Fatalf("record = %+v", rec)
	}
	if !strings.HasPrefix(rec.Masked, "sk-llmproxy-…") || !strings.HasSuffix(rec.Masked, secret[len(secret)-4:]) {
		t.Fatalf("masked = %q", rec.Masked)
	}
	got, err := LookupHash(ctx, rdb, prefix, Hash(secret))
	if err != nil || got.Name != "alice laptop" || *got.Limits.RequestsPerMinute != 60 || !got.ExpiresAt.Equal(exp) {
		t.Fatalf("LookupHash = %+v, %v", got, err)
	}
	if _, err := LookupHash(ctx, rdb, prefix, Hash("sk-llmproxy-nope")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookupHash(unknown) = %v, want ErrNotFound", err)
	}

	// Nothing in Redis holds the secret, in a key name or a value.
	names, err := rdb.Keys(ctx, prefix+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 3 {
		t.Fatalf("keys = %v, want byhash, id and ids", names)
	}
	for _, n := range names {
		dump, _ := rdb.Dump(ctx, n).Result()
		if strings.Contains(n, secret) || strings.Contains(dump, secret) || strings.Contains(dump, secret[len(SecretPrefix):]) {
			t.Fatalf("%s holds the plaintext secret", n)
		}
	}

	_, rec2, err := Create(ctx, rdb, prefix, Spec{ID: "bob", Status: "disabled"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "bob"}); !errors.Is(err, ErrExists) {
		t.Fatalf("Create with a taken id = %v, want ErrExists", err)
	}
	if _, _, err := Create(ctx, rdb, prefix, Spec{QuotaResetPeriod: "hourly"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create(invalid) = %v, want ErrInvalid", err)
	}
	list, err := List(ctx, rdb, prefix)
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %v, %v; want 2 keys", list, err)
	}
	if b, err := Get(ctx, rdb, prefix, "bob"); err != nil || b.SHA256 != rec2.SHA256 || b.Active() {
		t.Fatalf("Get(bob) = %+v, %v; want the disabled key", b, err)
	}
	if b, err := SetStatus(ctx, rdb, prefix, "bob", StatusActive); err != nil || !b.Active() {
		t.Fatalf("SetStatus(active) = %+v, %v", b, err)
	}
	if b, err := Get(ctx, rdb, prefix, "bob"); err != nil || !b.Active() {
		t.Fatalf("after enable: Get(bob) = %+v, %v", b, err)
	}
	if _, err := SetStatus(ctx, rdb, prefix, "bob", "paused"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SetStatus(paused) = %v, want ErrInvalid", err)
	}
	if _, err := SetStatus(ctx, rdb, prefix, "nobody", StatusDisabled); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetStatus(nobody) = %v, want ErrNotFound", err)
	}
	if err := Delete(ctx, rdb, prefix, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, rdb, prefix, "bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	if _, err := LookupHash(ctx, rdb, prefix, rec2.SHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookupHash of a deleted key = %v, want ErrNotFound", err)
	}
	if list, err := List(ctx, rdb, prefix); err != nil || len(list) != 1 || list[0].ID != rec.ID {
		t.Fatalf("List after delete = %v, %v", list, err)
	}
}

// TestKeyIDsAsInTheFile: an id is accepted by llmproxy keys create exactly
// when api_keys[].id accepts it.
func TestKeyIDsAsInTheFile(t *testing.T) {
	for _, id := range []string{"team-a", "Team_A-2", "key_0123456789ab", strings.Repeat("x", 64),
		"team.a", "a.b.c", strings.Repeat("x", 65), "a b", "a*", "a>", "ü"} {
		specErr := Spec{ID: id}.Validate()
		_, fileErr := config.Parse([]byte("backends: [{url: \"http://b:1\"}]\napi_keys: [{key: sk-a, id: \""+id+"\"}]\n"), "c.yaml")
		if (specErr == nil) != (fileErr == nil) {
			t.Errorf("id %q: keys create says %v, the file says %v", id, specErr, fileErr)
		}
		if strings.Contains(id, ".") && specErr == nil {
			t.Errorf("id %q with a '.' accepted", id)
		}
	}
}

// TestCreateRefusesPastExpiry: a key whose expires_at has passed, which
// every gateway would refuse at its first use, is not made; nothing is
// stored.
func TestCreateRefusesPastExpiry(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testRedis(t)
	past := time.Now().Add(-time.Minute)
	_, _, err := Create(ctx, rdb, prefix, Spec{ID: "late", ExpiresAt: &past})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "in the past") {
		t.Fatalf("Create = %v, want ErrInvalid saying expires_at is in the past", err)
	}
	if _, err := Get(ctx, rdb, prefix, "late"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get = %v, want ErrNotFound", err)
	}
	future := time.Now().Add(time.Hour)
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "late", ExpiresAt: &future}); err != nil {
		t.Fatal(err)
	}
}

// TestDeletedIDIsNotReused: the ledger keeps usage by key id, so a key made
// with a deleted key's id would start with that key's quota spent (and an
// operator could reset a quota by delete and create). Such a create is
// refused and claims nothing; the deleted key's usage stays recorded under
// its id. An id left by a create cut short, whose key never worked, is
// free again once deleted.
func TestDeletedIDIsNotReused(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testRedis(t)
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "team-a", TotalQuota: ptr[int64](1000), QuotaResetPeriod: "never"}); err != nil {
		t.Fatal(err)
	}
	led := ledger.NewRedis(rdb, prefix)
	if _, err := led.Apply(ctx, []ledger.Entry{{RequestID: "r1", KeyID: "team-a", Time: time.Now(), PromptTokens: 600, CompletionTokens: 300}}); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, rdb, prefix, "team-a"); err != nil {
		t.Fatal(err)
	}
	_, _, err := Create(ctx, rdb, prefix, Spec{ID: "team-a", TotalQuota: ptr[int64](1000), QuotaResetPeriod: "never"})
	if !errors.Is(err, ErrDeleted) {
		used, _ := led.Usage(ctx, "team-a", ledger.Never, time.Now())
		t.Fatalf("Create with a deleted key's id = %v, want ErrDeleted (the new key would start with %d of its 1000 tokens used)", err, used.TotalTokens)
	}
	if _, err := Get(ctx, rdb, prefix, "team-a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the refused create: Get = %v, want ErrNotFound", err)
	}
	if err := Delete(ctx, rdb, prefix, "team-a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the refused create: Delete = %v, want ErrNotFound", err)
	}
	if used, err := led.Usage(ctx, "team-a", ledger.Never, time.Now()); err != nil || used.TotalTokens != 900 {
		t.Fatalf("deleted key's usage = %+v, %v; want its 900 tokens kept", used, err)
	}
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "team-a-2"}); err != nil {
		t.Fatal(err)
	}

	// A create cut short after claiming the id.
	if err := rdb.Set(ctx, byIDKey(prefix, "half"), Hash("sk-llmproxy-never-stored"), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, rdb, prefix, "half"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "half"}); err != nil {
		t.Fatalf("Create of an id only a create cut short had = %v, want it made", err)
	}
}

// TestConcurrentStatusChanges: many admins enabling and disabling one key
// at once all succeed (each change retried past the others'), and the key
// ends as the last one left it; with 10 tries each, about one change in
// five failed as if Redis were down.
func TestConcurrentStatusChanges(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testRedis(t)
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "busy"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 500)
	for w := range 20 {
		wg.Go(func() {
			for i := range 25 {
				status := StatusActive
				if (w+i)%2 == 0 {
					status = StatusDisabled
				}
				if _, err := SetStatus(ctx, rdb, prefix, "busy", status); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 3 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Fatalf("%d of 500 status changes failed", n)
	}
	if _, err := SetStatus(ctx, rdb, prefix, "busy", StatusDisabled); err != nil {
		t.Fatal(err)
	}
	if rec, err := Get(ctx, rdb, prefix, "busy"); err != nil || rec.Status != StatusDisabled {
		t.Fatalf("after the last change: %+v, %v; want disabled", rec, err)
	}
}

// TestUpdate: a change is a JSON merge patch of the key's spec: fields
// given replace, null clears (back to the defaults), limits merge field by
// field; the id, secret and creation stay; what Create would refuse is
// refused and changes nothing.
func TestUpdate(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testRedis(t)
	secret, orig, err := Create(ctx, rdb, prefix, Spec{ID: "team-a", Name: "Team A", TotalQuota: ptr(int64(1000)),
		QuotaResetPeriod: "daily", AllowedModels: []string{"qwen"}, Limits: &Limits{RequestsPerMinute: ptr(int64(60)), MaxConcurrent: ptr(int64(2))}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := Update(ctx, rdb, prefix, "team-a", []byte(`{"total_quota": 9007199254740991, "allowed_models": null, "limits": {"max_concurrent": 5, "requests_per_minute": null}, "name": "Team A (grown)"}`))
	if err != nil {
		t.Fatal(err)
	}
	if *rec.TotalQuota != 9007199254740991 || rec.AllowedModels != nil || *rec.Limits.MaxConcurrent != 5 || rec.Limits.RequestsPerMinute != nil ||
		rec.Name != "Team A (grown)" || rec.QuotaResetPeriod != "daily" || rec.Status != StatusActive {
		t.Fatalf("updated: %+v (limits %+v)", rec, rec.Limits)
	}
	if rec.SHA256 != orig.SHA256 || rec.Masked != orig.Masked || !rec.CreatedAt.Equal(orig.CreatedAt) || rec.ID != "team-a" {
		t.Fatalf("identity changed: %+v, was %+v", rec, orig)
	}
	if got, err := LookupHash(ctx, rdb, prefix, Hash(secret)); err != nil || *got.TotalQuota != 9007199254740991 || *got.Limits.MaxConcurrent != 5 {
		t.Fatalf("the secret reads %+v, %v", got, err)
	}
	// Clearing the last override drops the limits.
	if rec, err = Update(ctx, rdb, prefix, "team-a", []byte(`{"limits": {"max_concurrent": null}}`)); err != nil || rec.Limits != nil {
		t.Fatalf("limits cleared: %+v, %v", rec.Limits, err)
	}
	// Freeing the key drops its own limits; a limit given then limits it
	// again.
	if _, err := Update(ctx, rdb, prefix, "team-a", []byte(`{"limits": {"max_concurrent": 3, "tokens_per_minute": 50}}`)); err != nil {
		t.Fatal(err)
	}
	if rec, err = Update(ctx, rdb, prefix, "team-a", []byte(`{"limits": {"enabled": false}}`)); err != nil || rec.Limits == nil || rec.Limits.Enabled == nil || *rec.Limits.Enabled || rec.Limits.MaxConcurrent != nil || rec.Limits.TokensPerMinute != nil {
		t.Fatalf("enabled false: %+v, %v", rec.Limits, err)
	}
	if rec, err = Update(ctx, rdb, prefix, "team-a", []byte(`{"limits": {"requests_per_minute": 10}}`)); err != nil || rec.Limits == nil || rec.Limits.Enabled != nil || *rec.Limits.RequestsPerMinute != 10 {
		t.Fatalf("a limit for a freed key: %+v, %v", rec.Limits, err)
	}
	if rec, err = Update(ctx, rdb, prefix, "team-a", []byte(`{"limits": {"requests_per_minute": null}}`)); err != nil || rec.Limits != nil {
		t.Fatalf("the last limit cleared: %+v, %v", rec.Limits, err)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if rec, err = Update(ctx, rdb, prefix, "team-a", []byte(`{"expires_at": "`+future+`", "status": "disabled"}`)); err != nil || rec.ExpiresAt == nil || rec.Status != StatusDisabled {
		t.Fatalf("expiry and status: %+v, %v", rec, err)
	}
	for _, bad := range []string{
		`{"id": "team-b"}`,
		`{"total_quota": -1}`,
		`{"total_quota": "lots"}`,
		`{"quota_reset_period": "hourly"}`,
		`{"allowed_ips": ["not-an-ip"]}`,
		`{"sha256": "00"}`,
		`{"expires_at": "2020-01-01T00:00:00Z"}`,
		`{"limits": {"enabled": false, "max_concurrent": 3}}`,
		`[1]`,
		`null`,
	} {
		if _, err := Update(ctx, rdb, prefix, "team-a", []byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Update(%s) = %v, want ErrInvalid", bad, err)
		}
	}
	if got, err := Get(ctx, rdb, prefix, "team-a"); err != nil || got.ExpiresAt == nil || got.Status != StatusDisabled || got.Limits != nil || *got.TotalQuota != 9007199254740991 {
		t.Fatalf("after refused changes: %+v, %v", got, err)
	}
	if _, err := Update(ctx, rdb, prefix, "nobody", []byte(`{"name": "x"}`)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
}

// failSecond makes the second command of each pipeline fail as a read
// timeout would, and answers the first command's error, as go-redis's
// pipeline Exec does.
type failSecond struct{}

func (failSecond) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (failSecond) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (failSecond) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		_ = next(ctx, cmds)
		if len(cmds) > 1 {
			cmds[1].SetErr(errors.New("i/o timeout"))
		}
		for _, c := range cmds {
			if err := c.Err(); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestGetManyReportsFailedReads: a read that failed behind a missing key's
// redis.Nil is an error, not a key that does not exist.
func TestGetManyReportsFailedReads(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "exists"}); err != nil {
		t.Fatal(err)
	}
	rdb.AddHook(failSecond{})
	if got, err := GetMany(ctx, rdb, prefix, []string{"missing", "exists"}); err == nil {
		t.Fatalf("GetMany = %v, nil error; want the failed read's", got)
	}
}

// TestUpdateTakesNamesAsWritten: a field in another case, which
// encoding/json would take beside the real one, and a null status are
// refused.
func TestUpdateTakesNamesAsWritten(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	if _, _, err := Create(ctx, rdb, prefix, Spec{ID: "k", Name: "old", Status: StatusDisabled}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"NAME":"new"}`, `{"limits":{"Max_Concurrent":2}}`, `{"status":null}`} {
		if _, err := Update(ctx, rdb, prefix, "k", []byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Update(%s) = %v, want ErrInvalid", bad, err)
		}
	}
	if rec, _ := Get(ctx, rdb, prefix, "k"); rec.Name != "old" || rec.Status != StatusDisabled {
		t.Fatalf("after refused changes: %+v", rec)
	}
}

// TestGetManyOverAConnectionThatFailedAuth: a pipeline that never went out
// (its connection failed AUTH) is that failure, not keys that do not exist
// or an empty record.
func TestGetManyOverAConnectionThatFailedAuth(t *testing.T) {
	good, prefix := testRedis(t)
	ctx := context.Background()
	if _, _, err := Create(ctx, good, prefix, Spec{ID: "exists"}); err != nil {
		t.Fatal(err)
	}
	opts := *good.Options()
	opts.Username, opts.Password, opts.MaxRetries = "llmproxy-test-nobody", "wrong-password", -1
	rdb := redis.NewClient(&opts)
	defer rdb.Close()
	if got, err := GetMany(ctx, rdb, prefix, []string{"exists"}); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("GetMany = %v, %v; want the connection's WRONGPASS", got, err)
	}
}

// refusePublish is a go-redis hook that fails PUBLISH, as Redis does for an
// ACL user without the channel.
type refusePublish struct{}

func (refusePublish) DialHook(next redis.DialHook) redis.DialHook { return next }
func (refusePublish) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "publish" {
			cmd.SetErr(errors.New("NOPERM this user has no permissions to access one of the channels used as arguments"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}
func (refusePublish) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestChangesAnnounced: each change of a key is announced on
// ChangedChannel with its hash; one whose announcement is refused is still
// made, and says so apart from any failure (NotAnnounced).
func TestChangesAnnounced(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := context.Background()
	_, rec, err := Create(ctx, rdb, prefix, Spec{ID: "ann"})
	if err != nil {
		t.Fatal(err)
	}
	sub := rdb.Subscribe(ctx, ChangedChannel(prefix))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription itself
		t.Fatal(err)
	}
	heard := func(what string) {
		t.Helper()
		msg, err := sub.ReceiveTimeout(ctx, 2*time.Second)
		if m, ok := msg.(*redis.Message); err != nil || !ok || m.Payload != rec.SHA256 {
			t.Fatalf("%s: announced %v (%v), want the key's hash", what, msg, err)
		}
	}
	if _, err := SetStatus(ctx, rdb, prefix, "ann", StatusDisabled); err != nil {
		t.Fatal(err)
	}
	heard("disable")
	if _, err := Update(ctx, rdb, prefix, "ann", []byte(`{"name":"n"}`)); err != nil {
		t.Fatal(err)
	}
	heard("update")

	opts := *rdb.Options()
	refused := redis.NewClient(&opts)
	defer refused.Close()
	refused.AddHook(refusePublish{})
	got, err := SetStatus(ctx, refused, prefix, "ann", StatusActive)
	warning, rest := NotAnnounced(err)
	if rest != nil || !strings.Contains(warning, "NOPERM") || got.Status != StatusActive {
		t.Fatalf("enable with the announcement refused: %+v, %v; want it made, with a warning", got, err)
	}
	if now, err := Get(ctx, rdb, prefix, "ann"); err != nil || now.Status != StatusActive {
		t.Fatalf("stored %+v (%v), want it enabled", now, err)
	}
	if _, rest := NotAnnounced(Delete(ctx, refused, prefix, "ann")); rest != nil {
		t.Fatal(rest)
	}
	if _, err := Get(ctx, rdb, prefix, "ann"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v, want it gone", err)
	}
	if _, err := NotAnnounced(errors.New("down")); err == nil {
		t.Fatal("NotAnnounced hid a failure")
	}
}
