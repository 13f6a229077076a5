package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
)

const keysUsage = `Usage:
  llmproxy keys create --config FILE [--id ID] [--name N] [--user U] [--quota TOKENS] [--period daily|weekly|monthly|never]
                       [--allowed-ips CIDR,...] [--models M,...] [--expires RFC3339] [--rps N] [--rpm N] [--tpm N]
                       [--max-concurrent N] [--no-limits] [--capture-response[=false]] [--disabled] [--json]
  llmproxy keys update ID --config FILE [--name N] [--user U] [--quota TOKENS|default] [--period P|default]
                       [--allowed-ips CIDR,...] [--models M,...] [--expires RFC3339|never] [--rps N|default]
                       [--rpm N|default] [--tpm N|default] [--max-concurrent N|default] [--no-limits]
                       [--default-limits] [--capture-response true|false|default] [--json]
  llmproxy keys list --config FILE [--json]
  llmproxy keys show|disable|enable|delete ID --config FILE [--json]

Keys live in Redis (redis.url, redis.addrs or redis.sentinel); only the SHA-256 of a secret is
stored, so create prints the secret once. Unset fields take auth.defaults and
rate_limit.per_key; 0 means unlimited. update changes only the fields given
("default", or an empty list or name, puts a field back to the defaults);
the secret and the id stay.
`

// cmdKeys manages the Redis key store.
func cmdKeys(args []string) int { return runKeys(args, os.Stdout, os.Stderr) }

func runKeys(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "llmproxy keys %s: "+format+"\n", append([]any{sub}, a...)...)
		return code
	}
	switch sub {
	case "create", "update", "list", "show", "disable", "enable", "delete":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, keysUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "llmproxy keys: unknown command %q\n\n%s", sub, keysUsage)
		return 2
	}
	// The id may come before or after the flags.
	var id string
	if sub != "create" && sub != "list" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}

	fs := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (YAML)")
	asJSON := fs.Bool("json", false, "print JSON")
	var (
		spec                keys.Spec
		quota               int64
		ips, models, expiry string
		rps                 float64
		rpm, tpm, conc      int64
		disabled, capture   bool
		noLimits            bool
	)
	if sub == "create" {
		fs.StringVar(&spec.ID, "id", "", "public id: letters, digits, '_' and '-', at most 64 (default: derived from the secret's hash)")
		fs.StringVar(&spec.Name, "name", "", "name")
		fs.StringVar(&spec.UserID, "user", "", "user id")
		fs.Int64Var(&quota, "quota", 0, "tokens per period (0 = unlimited; default auth.defaults.total_quota)")
		fs.StringVar(&spec.QuotaResetPeriod, "period", "", "quota period: daily, weekly, monthly or never")
		fs.StringVar(&ips, "allowed-ips", "", "comma-separated CIDRs or addresses (IPv4 or IPv6)")
		fs.StringVar(&models, "models", "", "comma-separated models the key may use (default: all)")
		fs.StringVar(&expiry, "expires", "", "expiry time, RFC 3339")
		fs.Func("rps", "requests per second (overrides rate_limit.per_key; 0: no limit for this key)", func(v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return errors.New("want a number")
			}
			if config.RoundsToZero(v) {
				return fmt.Errorf("%s is too small to hold: it would read as 0, which means no limit", v)
			}
			rps = f
			return nil
		})
		fs.Int64Var(&rpm, "rpm", 0, "requests per minute (overrides rate_limit.per_key; 0: no limit for this key)")
		fs.Int64Var(&tpm, "tpm", 0, "tokens per minute (overrides rate_limit.per_key; 0: no limit for this key)")
		fs.Int64Var(&conc, "max-concurrent", 0, "requests at once (overrides rate_limit.per_key; 0: no limit for this key)")
		fs.BoolVar(&noLimits, "no-limits", false, "free the key of every per-key limit (rate_limit.per_key's and its own)")
		fs.BoolVar(&disabled, "disabled", false, "create the key disabled")
		fs.BoolVar(&capture, "capture-response", false, "capture this key's responses into its events (=false: never; default: logging.capture_response)")
	}
	// update's flags make a merge patch of the key's spec: a field set,
	// or null to put it back to the defaults.
	patch, limits := map[string]any{}, map[string]any{}
	if sub == "update" {
		field := func(dst map[string]any, name, key, usage string, parse func(string) (any, error)) {
			fs.Func(name, usage, func(v string) error {
				if v == "default" {
					dst[key] = nil
					return nil
				}
				x, err := parse(v)
				if err != nil {
					return err
				}
				dst[key] = x
				return nil
			})
		}
		text := func(v string) (any, error) {
			if v == "" {
				return nil, nil
			}
			return v, nil
		}
		list := func(v string) (any, error) {
			l, err := splitList(v)
			if err != nil || l == nil {
				return nil, err // "": back to no restriction
			}
			return l, nil
		}
		count := func(v string) (any, error) {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, errors.New("want a whole number, or default")
			}
			return n, nil
		}
		field(patch, "name", "name", "name (empty: none)", text)
		field(patch, "user", "user_id", "user id (empty: none)", text)
		field(patch, "quota", "total_quota", "tokens per period (0 = unlimited; default: auth.defaults.total_quota)", count)
		field(patch, "period", "quota_reset_period", "quota period: daily, weekly, monthly, never or default", text)
		field(patch, "allowed-ips", "allowed_ips", "comma-separated CIDRs or addresses (empty: any address)", list)
		field(patch, "models", "allowed_models", "comma-separated models the key may use (empty: every model)", list)
		field(patch, "expires", "expires_at", "expiry time, RFC 3339, or never", func(v string) (any, error) {
			if v == "never" {
				return nil, nil
			}
			if _, err := time.Parse(time.RFC3339, v); err != nil {
				return nil, err
			}
			return v, nil
		})
		field(patch, "capture-response", "capture_response", "true, false or default (logging.capture_response)", func(v string) (any, error) {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, errors.New("want true, false or default")
			}
			return b, nil
		})
		field(limits, "rps", "requests_per_second", "requests per second (0: no limit for this key; default: rate_limit.per_key's)", func(v string) (any, error) {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return nil, errors.New("want a number, or default")
			}
			if config.RoundsToZero(v) {
				return nil, fmt.Errorf("%s is too small to hold: it would read as 0, which means no limit", v)
			}
			return f, nil
		})
		field(limits, "rpm", "requests_per_minute", "requests per minute (0: no limit for this key; default: rate_limit.per_key's)", count)
		field(limits, "tpm", "tokens_per_minute", "tokens per minute (0: no limit for this key; default: rate_limit.per_key's)", count)
		field(limits, "max-concurrent", "max_concurrent", "requests at once (0: no limit for this key; default: rate_limit.per_key's)", count)
		fs.BoolVar(&noLimits, "no-limits", false, "free the key of every per-key limit (rate_limit.per_key's and its own)")
		fs.BoolFunc("default-limits", "drop the key's own limits: rate_limit.per_key's apply", func(v string) error {
			on, err := strconv.ParseBool(v)
			if err != nil {
				return errors.New("want true or false")
			}
			if on {
				patch["limits"] = nil
			} else {
				delete(patch, "limits")
			}
			return nil
		})
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if id == "" && fs.NArg() > 0 && sub != "create" && sub != "list" {
		// The id after the flags; flags may follow it too.
		id = fs.Arg(0)
		if code, ok := parseFlags(fs, fs.Args()[1:], stdout, stderr); !ok {
			return code
		}
	}
	if fs.NArg() > 0 {
		return fail(2, "unexpected argument %q (see llmproxy keys --help)", fs.Arg(0))
	}
	if *cfgPath == "" {
		return fail(2, "--config is required")
	}
	if sub != "create" && sub != "list" && id == "" {
		return fail(2, "a key id is required")
	}
	if sub == "update" {
		if noLimits {
			if len(limits) > 0 {
				return fail(2, "--no-limits frees the key of every limit: give it without --rps, --rpm, --tpm or --max-concurrent")
			}
			limits = map[string]any{"enabled": false, "requests_per_second": nil, "requests_per_minute": nil, "tokens_per_minute": nil, "max_concurrent": nil}
		}
		if len(limits) > 0 {
			if _, ok := patch["limits"]; ok {
				return fail(2, "--default-limits drops the key's limits: give it without --rps, --rpm, --tpm, --max-concurrent or --no-limits")
			}
			patch["limits"] = limits
		}
		if len(patch) == 0 {
			return fail(2, "nothing to change: give the fields to change (see llmproxy keys --help)")
		}
	}
	if sub == "create" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if set["quota"] {
			spec.TotalQuota = &quota
		}
		var err error
		if spec.AllowedIPs, err = splitList(ips); err != nil {
			return fail(2, "--allowed-ips: %v", err)
		}
		if spec.AllowedModels, err = splitList(models); err != nil {
			return fail(2, "--models: %v", err)
		}
		if expiry != "" {
			t, err := time.Parse(time.RFC3339, expiry)
			if err != nil {
				return fail(2, "--expires: %v", err)
			}
			spec.ExpiresAt = &t
		}
		var l keys.Limits
		if set["rps"] {
			l.RequestsPerSecond = &rps
		}
		if set["rpm"] {
			l.RequestsPerMinute = &rpm
		}
		if set["tpm"] {
			l.TokensPerMinute = &tpm
		}
		if set["max-concurrent"] {
			l.MaxConcurrent = &conc
		}
		if noLimits {
			if !l.IsZero() {
				return fail(2, "--no-limits frees the key of every limit: give it without --rps, --rpm, --tpm or --max-concurrent")
			}
			off := false
			l.Enabled = &off
		}
		if !l.IsZero() {
			spec.Limits = &l
		}
		if disabled {
			spec.Status = keys.StatusDisabled
		}
		if set["capture-response"] {
			spec.CaptureResponse = &capture
		}
		if err := spec.Validate(); err != nil {
			return fail(2, "%v", err)
		}
	}

	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if !cfg.Redis.Enabled() {
		return fail(1, "keys live in Redis: set redis.url (or redis.addrs, or redis.sentinel) in %s", *cfgPath)
	}
	if cfg.Auth.Storage != "redis" {
		fmt.Fprintf(stderr, "llmproxy keys: warning: auth.storage is %q, not redis: gateways with this config will not accept these keys\n", cfg.Auth.Storage)
	}
	quietRedis()
	rdb, err := openRedis(cfg)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer rdb.Close()
	prefix := redisPrefix(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	printJSON := func(v any) {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
	code := func(err error) int {
		if ne := net.Error(nil); errors.As(err, &ne) {
			// "i/o timeout" alone does not say what did not answer.
			return fail(1, "%v (Redis at %s)", err, redisAt(rdb))
		}
		return fail(1, "%v", err)
	}

	switch sub {
	case "create":
		secret, rec, err := keys.Create(ctx, rdb, prefix, spec)
		if errors.Is(err, keys.ErrInvalid) {
			return fail(2, "%v", err)
		}
		if err != nil {
			return code(err)
		}
		if *asJSON {
			printJSON(map[string]any{"key": secret, "record": rec, "warning": "shown only once"})
		} else {
			fmt.Fprintf(stdout, "Created key %s.\n\n    %s\n\n", rec.ID, secret)
		}
		fmt.Fprintln(stderr, "llmproxy keys: store this key now: it is shown only once and cannot be recovered (only its SHA-256 is kept)")
	case "list":
		list, err := keys.List(ctx, rdb, prefix)
		if err != nil {
			return code(err)
		}
		if *asJSON {
			printJSON(map[string]any{"keys": list})
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tUSER\tSTATUS\tQUOTA\tPERIOD\tEXPIRES\tKEY")
		now := time.Now()
		for _, r := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, dash(cell(r.Name)), dash(cell(r.UserID)), statusText(r, now),
				quotaText(r.TotalQuota), dash(r.QuotaResetPeriod), expiresText(r.ExpiresAt), r.Masked)
		}
		_ = tw.Flush()
	case "show":
		rec, err := keys.Get(ctx, rdb, prefix, id)
		if err != nil {
			return code(err)
		}
		if *asJSON {
			printJSON(rec)
		} else {
			printRecord(stdout, rec, time.Now())
		}
	case "update":
		body, err := json.Marshal(patch)
		if err != nil {
			return code(err)
		}
		rec, err := keys.Update(ctx, rdb, prefix, id, body)
		err = notAnnounced(stderr, err)
		if errors.Is(err, keys.ErrInvalid) {
			return fail(2, "%v", err)
		}
		if err != nil {
			return code(err)
		}
		if *asJSON {
			printJSON(rec)
		} else {
			fmt.Fprintf(stdout, "Key %s updated:\n\n", rec.ID)
			printRecord(stdout, rec, time.Now())
		}
	case "disable", "enable":
		status := keys.StatusDisabled
		if sub == "enable" {
			status = keys.StatusActive
		}
		rec, err := keys.SetStatus(ctx, rdb, prefix, id, status)
		err = notAnnounced(stderr, err)
		if err != nil {
			return code(err)
		}
		if *asJSON {
			printJSON(rec)
		} else {
			fmt.Fprintf(stdout, "Key %s is %s.\n", rec.ID, rec.Status)
		}
	case "delete":
		if err := notAnnounced(stderr, keys.Delete(ctx, rdb, prefix, id)); err != nil {
			return code(err)
		}
		if *asJSON {
			printJSON(map[string]any{"deleted": id})
		} else {
			fmt.Fprintf(stdout, "Key %s deleted (its usage stays recorded under its id, which no new key may take).\n", id)
		}
	}
	return 0
}

// splitList reads a comma-separated flag value: nil for "", and an error
// for an empty entry (",", "a,,b"), which would otherwise be dropped, and
// "," read as no restriction at all.
func splitList(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			return nil, fmt.Errorf("%q has an empty entry", s)
		}
		out = append(out, p)
	}
	return out, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printRecord writes rec as `keys show` does without --json, a field a
// line.
func printRecord(w io.Writer, rec keys.Record, now time.Time) {
	list := func(l []string) string { return dash(strings.Join(l, ", ")) }
	limits := "default"
	if l := rec.Limits; l != nil && l.Enabled != nil && !*l.Enabled {
		limits = "none (limits.enabled: false)"
	} else if !l.IsZero() {
		var parts []string
		if l.RequestsPerSecond != nil {
			parts = append(parts, fmt.Sprintf("requests_per_second %v", *l.RequestsPerSecond))
		}
		for _, f := range []struct {
			name string
			n    *int64
		}{{"requests_per_minute", l.RequestsPerMinute}, {"tokens_per_minute", l.TokensPerMinute}, {"max_concurrent", l.MaxConcurrent}} {
			if f.n != nil {
				parts = append(parts, fmt.Sprintf("%s %d", f.name, *f.n))
			}
		}
		limits = strings.Join(parts, ", ") + " (the rest default)"
	}
	capture := "default"
	if rec.CaptureResponse != nil {
		capture = fmt.Sprint(*rec.CaptureResponse)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range [][2]string{
		{"id", rec.ID}, {"name", dash(cell(rec.Name))}, {"user", dash(cell(rec.UserID))}, {"status", statusText(rec, now)},
		{"quota", quotaText(rec.TotalQuota)}, {"period", dash(rec.QuotaResetPeriod)}, {"expires", expiresText(rec.ExpiresAt)},
		{"allowed ips", list(rec.AllowedIPs)}, {"allowed models", list(rec.AllowedModels)}, {"limits", limits},
		{"capture response", capture}, {"key", rec.Masked}, {"sha256", rec.SHA256},
		{"created", rec.CreatedAt.UTC().Format(time.RFC3339)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
	}
	_ = tw.Flush()
}

func quotaText(q *int64) string {
	switch {
	case q == nil:
		return "default"
	case *q == 0:
		return "unlimited"
	}
	return fmt.Sprint(*q)
}

// statusText is a key's status as gateways see it at now: an active key
// whose expires_at has passed is refused 403 key_expired, and the list
// says so.
func statusText(r keys.Record, now time.Time) string {
	if r.Active() && r.ExpiresAt != nil && !now.Before(*r.ExpiresAt) {
		return "expired"
	}
	return r.Status
}

func expiresText(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// notAnnounced writes the warning of a change made but not announced to the
// gateways (keys.NotAnnouncedError) to stderr, and returns any other error.
func notAnnounced(stderr io.Writer, err error) error {
	warning, rest := keys.NotAnnounced(err)
	if warning != "" {
		fmt.Fprintln(stderr, "llmproxy keys: warning:", warning)
	}
	return rest
}
