package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// cmdUsage prints usage per key for the current period from the ledger:
// Redis when configured, else the local store under data_dir — or, while a
// running `serve` holds that store, that server's admin API.
func cmdUsage(args []string) int {
	fs := flag.NewFlagSet("usage", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (YAML)")
	key := fs.String("key", "", "only this key id")
	periodFlag := fs.String("period", "", "daily, weekly, monthly or never (default: each key's own quota period)")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := parseOnlyFlags(fs, args, os.Stdout, os.Stderr); !ok {
		return code
	}
	if *cfgPath == "" {
		fmt.Fprintln(os.Stderr, "llmproxy usage: --config is required")
		return 2
	}
	if *key != "" && !config.KeyIDPattern.MatchString(*key) {
		// As GET /admin/usage: the ledger's other rows (a user's) are no
		// key's.
		fmt.Fprintf(os.Stderr, "llmproxy usage: --key %q is no key id (%s)\n", *key, config.KeyIDRule)
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var p ledger.Period
	if *periodFlag != "" {
		if p, err = ledger.ParsePeriod(*periodFlag); err != nil {
			fmt.Fprintln(os.Stderr, "llmproxy usage: --period:", err)
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), usageWait)
	defer cancel()
	rows, err := readUsage(ctx, cfg, *key, p)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmproxy usage:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{"usage": rows})
		return 0
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tPERIOD\tPROMPT\tCOMPLETION\tTOTAL\tREQUESTS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", r.KeyID, r.PeriodID, r.PromptTokens, r.CompletionTokens, r.TotalTokens, r.Requests)
	}
	_ = tw.Flush()
	return 0
}

func readUsage(ctx context.Context, cfg *config.Config, key string, p ledger.Period) ([]ledger.UsageRow, error) {
	if !cfg.Redis.Enabled() {
		path := cfg.DataPath("ledger.db")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no ledger at %s (has the server run with this data_dir?)", path)
		}
		s, err := ledger.OpenLocal(path)
		if errors.Is(err, ledger.ErrLocked) {
			return usageFromAdmin(ctx, cfg, key, p)
		}
		if err != nil {
			return nil, err
		}
		defer s.Close()
		return ledger.Report(ctx, s, key, p, periodOf(cfg, nil), time.Now())
	}
	quietRedis()
	lh, err := openLedger(ctx, cfg, false, true)
	if err != nil {
		return nil, err
	}
	defer lh.close()
	return ledger.Report(ctx, lh.store, key, p, periodOf(cfg, lh.rdb), time.Now())
}

// usageWait bounds the usage command: a report over many keys takes a
// while, a server that does not answer no longer.
const usageWait = 30 * time.Second

// usageFromAdmin asks the running server, which holds the local ledger.
func usageFromAdmin(ctx context.Context, cfg *config.Config, key string, p ledger.Period) ([]ledger.UsageRow, error) {
	if cfg.Admin.Listen == "" || cfg.Admin.Token == "" {
		return nil, errors.New("the local ledger is held by a running server; set admin.listen and admin.token so this command can ask it")
	}
	q := url.Values{}
	if key != "" {
		q.Set("key", key)
	}
	if p != "" {
		q.Set("period", string(p))
	}
	u := "http://" + dialable(cfg.Admin.Listen) + "/admin/usage"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+cfg.Admin.Token)
	resp, err := http.DefaultClient.Do(req)
	if errors.Is(err, context.DeadlineExceeded) {
		return nil, fmt.Errorf("ask the running server: its admin listener %s did not answer within %s", cfg.Admin.Listen, usageWait)
	}
	if err != nil {
		return nil, fmt.Errorf("ask the running server: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The admin API's error says why: a token that differs from the
		// server's (admin.token from another environment), a ledger it
		// cannot read.
		var e struct {
			Error struct{ Message string }
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		if resp.StatusCode == http.StatusUnauthorized {
			// The file's admin.token is not the server's: changed in the
			// file since the server started (it takes a restart), or
			// from another environment.
			e.Error.Message += " (the config's admin.token is not the running server's: a changed admin.token takes a restart)"
		}
		if e.Error.Message != "" {
			return nil, fmt.Errorf("the running server answered %s: %s", resp.Status, strings.TrimPrefix(e.Error.Message, " "))
		}
		return nil, fmt.Errorf("the running server answered %s", resp.Status)
	}
	var out struct {
		Usage []ledger.UsageRow `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	return out.Usage, nil
}

// dialable turns a listen address such as ":8081" into one a client can
// dial.
func dialable(addr string) string {
	if len(addr) > 0 && addr[0] == ':' {
		return "127.0.0.1" + addr
	}
	return addr
}
