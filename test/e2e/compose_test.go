package e2e

// Checks of the deployment files under deploy/ against the repository: the
// compose stack mounts files that exist, the configs it mounts load and
// listen where the port mappings, healthchecks and scrape targets say, the
// URLs in the configs name services of the stack, the dashboard uses only
// metrics the code exports, and the NATS stream definitions match
// pkg/events. No Docker is needed.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
)

// repoRoot is the repository's top directory (this package is test/e2e).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Fatalf("repository root not found at %s: %v", root, err)
	}
	return root
}

// composeFile is the part of the compose schema the checks read.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Entrypoint  stringList        `yaml:"entrypoint"`
	Command     stringList        `yaml:"command"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Environment map[string]string `yaml:"environment"`
	Healthcheck *struct {
		Test stringList `yaml:"test"`
	} `yaml:"healthcheck"`
	Deploy *struct {
		Replicas *int `yaml:"replicas"`
	} `yaml:"deploy"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

// stringList is a compose command/entrypoint/test: a list, or one string
// split on spaces.
type stringList []string

func (s *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = strings.Fields(n.Value)
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*s = l
	return nil
}

// flag returns the value of --name (or --name=value) in args.
func (s stringList) flag(name string) (string, bool) {
	for i, a := range s {
		if a == "--"+name && i+1 < len(s) {
			return s[i+1], true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// mount is one entry of a service's volumes (short syntax).
type mount struct {
	source, target string
	bind           bool // source is a host path, relative to the compose file
}

func (s composeService) mounts(t *testing.T, svc string) []mount {
	t.Helper()
	var out []mount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 3 {
			t.Errorf("service %s: volume %q: want source:target[:mode]", svc, v)
			continue
		}
		src := parts[0]
		out = append(out, mount{source: src, target: parts[1],
			bind: strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") || strings.HasPrefix(src, "~")})
	}
	return out
}

// hostFile is the host path (under the compose directory) mounted at
// target, directly or inside a mounted directory.
func (s composeService) hostFile(t *testing.T, svc, composeDir, target string) (string, bool) {
	t.Helper()
	for _, m := range s.mounts(t, svc) {
		if !m.bind {
			continue
		}
		if m.target == target {
			return filepath.Join(composeDir, m.source), true
		}
		if rel, ok := strings.CutPrefix(target, strings.TrimSuffix(m.target, "/")+"/"); ok {
			return filepath.Join(composeDir, m.source, rel), true
		}
	}
	return "", false
}

// environment expands ${NAME}, ${NAME:-default} and ${NAME-default} in the
// service's environment as compose would with nothing set in the shell.
func (s composeService) environment() map[string]string {
	ref := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}`)
	out := map[string]string{}
	for k, v := range s.Environment {
		out[k] = ref.ReplaceAllStringFunc(v, func(m string) string {
			sub := ref.FindStringSubmatch(m)
			if strings.Contains(m, "?") {
				return "set-by-test"
			}
			return sub[2]
		})
	}
	return out
}

// containerPorts are the container sides of the service's port mappings.
func (s composeService) containerPorts(t *testing.T, svc string) []int {
	t.Helper()
	var out []int
	for _, p := range s.Ports {
		spec := strings.SplitN(p, "/", 2)[0] // drop /tcp
		parts := strings.Split(spec, ":")
		n, err := strconv.Atoi(parts[len(parts)-1])
		if err != nil {
			t.Errorf("service %s: port mapping %q: container port is not a number", svc, p)
			continue
		}
		out = append(out, n)
	}
	return out
}

// healthURL is the URL the service's healthcheck probes, if it probes one.
func (s composeService) healthURL() (*url.URL, bool) {
	if s.Healthcheck == nil {
		return nil, false
	}
	for _, a := range s.Healthcheck.Test {
		if strings.HasPrefix(a, "http://") {
			u, err := url.Parse(a)
			return u, err == nil
		}
	}
	return nil, false
}

func portOf(t *testing.T, what, hostport string) (string, int) {
	t.Helper()
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%s: %q: %v", what, hostport, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q: port is not a number", what, hostport)
	}
	return host, n
}

// stack is the compose file with what each service listens on.
type stack struct {
	dir      string // deploy/compose
	file     composeFile
	llmproxy map[string]*llmproxyService
	listens  map[string][]int // service -> container ports it listens on
}

type llmproxyService struct {
	target string
	cfg    *config.Config
	listen int // gateway port, 0 for workers
	admin  int // admin listener (/metrics, /healthz)
}

func loadStack(t *testing.T) *stack {
	t.Helper()
	root := repoRoot(t)
	dir := filepath.Join(root, "deploy", "compose")
	data, err := os.ReadFile(filepath.Join(dir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	st := &stack{dir: dir, llmproxy: map[string]*llmproxyService{}, listens: map[string][]int{}}
	if err := yaml.Unmarshal(data, &st.file); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if len(st.file.Services) == 0 {
		t.Fatal("docker-compose.yml: no services")
	}
	for _, name := range st.names() {
		svc := st.file.Services[name]
		switch {
		case len(svc.Command) > 0 && svc.Command[0] == "serve":
			st.loadLlmproxy(t, name, svc)
		case slices.ContainsFunc(svc.Entrypoint, func(s string) bool { return filepath.Base(s) == "mockllm" }):
			addr, ok := svc.Command.flag("listen")
			if !ok {
				t.Fatalf("service %s: mockllm without --listen (its default is loopback only)", name)
			}
			host, port := portOf(t, "service "+name+" --listen", addr)
			if host == "127.0.0.1" || host == "localhost" {
				t.Errorf("service %s: mockllm listens on %s, unreachable from other containers", name, addr)
			}
			st.listens[name] = []int{port}
		case strings.HasPrefix(svc.Image, "nats:"):
			conf, ok := svc.Command.flag("config")
			if !ok {
				conf, ok = svc.Command.flag("c")
			}
			if !ok {
				t.Fatalf("service %s: nats-server without --config", name)
			}
			host, ok := svc.hostFile(t, name, dir, conf)
			if !ok {
				t.Fatalf("service %s: %s is not mounted from the repository", name, conf)
			}
			opts, err := server.ProcessConfigFile(host)
			if err != nil {
				t.Fatalf("service %s: %s: %v", name, host, err)
			}
			if !opts.JetStream {
				t.Errorf("service %s: %s does not enable JetStream", name, host)
			}
			st.listens[name] = []int{opts.Port, opts.HTTPPort}
		case strings.HasPrefix(svc.Image, "redis:"):
			port := 6379
			if p, ok := svc.Command.flag("port"); ok {
				port, _ = strconv.Atoi(p)
			}
			st.listens[name] = []int{port}
		case strings.HasPrefix(svc.Image, "prom/prometheus"):
			st.listens[name] = []int{9090}
		case strings.HasPrefix(svc.Image, "grafana/"):
			st.listens[name] = []int{3000}
		default:
			t.Errorf("service %s: image %q is not one the checks know; teach loadStack what it listens on", name, svc.Image)
		}
	}
	return st
}

func (st *stack) names() []string {
	names := make([]string, 0, len(st.file.Services))
	for n := range st.file.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// loadLlmproxy loads the config an llmproxy service mounts, with the
// environment compose gives it.
func (st *stack) loadLlmproxy(t *testing.T, name string, svc composeService) {
	t.Helper()
	path, ok := svc.Command.flag("config")
	if !ok {
		t.Fatalf("service %s: serve without --config", name)
	}
	target, ok := svc.Command.flag("target")
	if !ok {
		target = "all"
	}
	switch target {
	case "gateway", "meter", "notifier":
	default:
		t.Fatalf("service %s: --target %s; the stack runs gateway, meter and notifier separately", name, target)
	}
	host, ok := svc.hostFile(t, name, st.dir, path)
	if !ok {
		t.Fatalf("service %s: config %s is not mounted from the repository", name, path)
	}
	for k, v := range svc.environment() {
		t.Setenv(k, v)
	}
	cfg, err := config.Load(host)
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	ls := &llmproxyService{target: target, cfg: cfg}
	if a, ok := svc.Command.flag("admin-listen"); ok {
		cfg.Admin.Listen = a
	}
	if cfg.Admin.Listen == "" {
		t.Fatalf("service %s: no admin listener: nothing serves /metrics and /healthz", name)
	}
	var host2 string
	host2, ls.admin = portOf(t, "service "+name+" admin.listen", cfg.Admin.Listen)
	if host2 != "" && host2 != "0.0.0.0" && host2 != "::" {
		t.Errorf("service %s: admin.listen %s is not reachable from other containers", name, cfg.Admin.Listen)
	}
	st.listens[name] = append(st.listens[name], ls.admin)
	if target == "gateway" {
		host2, ls.listen = portOf(t, "service "+name+" listen", cfg.Listen)
		if host2 != "" && host2 != "0.0.0.0" && host2 != "::" {
			t.Errorf("service %s: listen %s is not reachable through a published port", name, cfg.Listen)
		}
		st.listens[name] = append(st.listens[name], ls.listen)
	}
	st.llmproxy[name] = ls
}

func TestComposeMountsExist(t *testing.T) {
	st := loadStack(t)
	root := repoRoot(t)
	for _, name := range st.names() {
		svc := st.file.Services[name]
		for _, m := range svc.mounts(t, name) {
			if !m.bind {
				if _, ok := st.file.Volumes[m.source]; !ok {
					t.Errorf("service %s: named volume %q is not declared under volumes:", name, m.source)
				}
				continue
			}
			p := filepath.Join(st.dir, m.source)
			if _, err := os.Stat(p); err != nil {
				t.Errorf("service %s: bind mount %s: %v", name, m.source, err)
				continue
			}
			if rel, err := filepath.Rel(root, p); err != nil || strings.HasPrefix(rel, "..") {
				t.Errorf("service %s: bind mount %s is outside the repository", name, m.source)
			}
		}
		if svc.Build != nil {
			ctx := filepath.Join(st.dir, svc.Build.Context)
			df := svc.Build.Dockerfile
			if df == "" {
				df = "Dockerfile"
			}
			if _, err := os.Stat(filepath.Join(ctx, df)); err != nil {
				t.Errorf("service %s: build: %v", name, err)
			}
		}
	}
}

func TestComposePortsMatchConfigs(t *testing.T) {
	st := loadStack(t)
	if len(st.llmproxy) == 0 {
		t.Fatal("no llmproxy services in the compose file")
	}
	targets := map[string]int{}
	for _, name := range st.names() {
		svc := st.file.Services[name]
		listens := st.listens[name]
		for _, p := range svc.containerPorts(t, name) {
			if !slices.Contains(listens, p) {
				t.Errorf("service %s: publishes container port %d, but it listens on %v", name, p, listens)
			}
		}
		if u, ok := svc.healthURL(); ok {
			host, port := portOf(t, "service "+name+" healthcheck", u.Host)
			if host != "127.0.0.1" && host != "localhost" {
				t.Errorf("service %s: healthcheck probes %s, not the container itself", name, u)
			}
			if !slices.Contains(listens, port) {
				t.Errorf("service %s: healthcheck probes port %d, but it listens on %v", name, port, listens)
			}
			if ls := st.llmproxy[name]; ls != nil && u.Path != "/healthz" && u.Path != "/readyz" {
				t.Errorf("service %s: healthcheck probes %s, want /healthz or /readyz", name, u.Path)
			}
		} else if st.llmproxy[name] != nil || name == "mockllm" {
			t.Errorf("service %s: no HTTP healthcheck", name)
		}
		ls := st.llmproxy[name]
		if ls == nil {
			continue
		}
		targets[ls.target]++
		switch ls.target {
		case "gateway":
			if !slices.Contains(svc.containerPorts(t, name), ls.listen) {
				t.Errorf("service %s: the gateway listens on %d, which no port mapping publishes", name, ls.listen)
			}
		default:
			// Workers are scaled with --scale / deploy.replicas: a fixed
			// host port would stop the second replica.
			if len(svc.Ports) > 0 {
				t.Errorf("service %s: a %s worker publishes ports %v; replicas would collide", name, ls.target, svc.Ports)
			}
		}
	}
	// The topology of the issue: two gateways, two meters, a notifier.
	count := func(target string) int {
		n := 0
		for name, ls := range st.llmproxy {
			if ls.target != target {
				continue
			}
			svc := st.file.Services[name]
			if svc.Deploy != nil && svc.Deploy.Replicas != nil {
				n += *svc.Deploy.Replicas
			} else {
				n++
			}
		}
		return n
	}
	for target, want := range map[string]int{"gateway": 2, "meter": 2, "notifier": 1} {
		if got := count(target); got != want {
			t.Errorf("%d %s instances in the stack, want %d", got, target, want)
		}
	}
}

func TestComposeServiceURLs(t *testing.T) {
	st := loadStack(t)
	check := func(svc, what, raw string) {
		t.Helper()
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			t.Errorf("service %s: %s %q is not a URL", svc, what, raw)
			return
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"nats": "4222", "redis": "6379", "http": "80", "https": "443"}[u.Scheme]
		}
		n, _ := strconv.Atoi(port)
		listens, ok := st.listens[u.Hostname()]
		if !ok {
			t.Errorf("service %s: %s %s names %q, which is not a service of the compose file", svc, what, raw, u.Hostname())
			return
		}
		if !slices.Contains(listens, n) {
			t.Errorf("service %s: %s %s uses port %d, but %s listens on %v", svc, what, raw, n, u.Hostname(), listens)
		}
	}
	natsNodes := 0
	for _, svc := range st.file.Services {
		if strings.HasPrefix(svc.Image, "nats:") {
			natsNodes++
		}
	}
	for _, name := range st.names() {
		ls := st.llmproxy[name]
		if ls == nil {
			continue
		}
		cfg := ls.cfg
		if cfg.NATS.URL == "" {
			t.Errorf("service %s: nats.url is empty; only --target all may embed NATS", name)
		}
		for part := range strings.SplitSeq(cfg.NATS.URL, ",") {
			check(name, "nats.url", strings.TrimSpace(part))
		}
		if cfg.NATS.Stream.Replicas > natsNodes {
			t.Errorf("service %s: nats.stream.replicas %d, but the stack runs %d NATS server(s)", name, cfg.NATS.Stream.Replicas, natsNodes)
		}
		if ls.target != "notifier" {
			if cfg.Redis.URL == "" {
				t.Errorf("service %s: a %s needs redis.url (the shared ledger)", name, ls.target)
			} else {
				check(name, "redis.url", cfg.Redis.URL)
			}
		}
		if ls.target == "gateway" {
			if len(cfg.Backends) == 0 {
				t.Errorf("service %s: no backends", name)
			}
			for i, b := range cfg.Backends {
				check(name, fmt.Sprintf("backends[%d].url", i), b.URL)
			}
		}
	}
}

// prometheusConfig is the part of prometheus.yml the checks read.
type prometheusConfig struct {
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
		DNSSDConfigs []struct {
			Names []string `yaml:"names"`
			Type  string   `yaml:"type"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
	} `yaml:"scrape_configs"`
}

func TestComposePrometheusTargets(t *testing.T) {
	st := loadStack(t)
	promSvc := ""
	for _, name := range st.names() {
		if strings.HasPrefix(st.file.Services[name].Image, "prom/prometheus") {
			promSvc = name
		}
	}
	if promSvc == "" {
		t.Fatal("no prometheus service")
	}
	path, ok := st.file.Services[promSvc].hostFile(t, promSvc, st.dir, "/etc/prometheus/prometheus.yml")
	if !ok {
		t.Fatal("prometheus.yml is not mounted at /etc/prometheus/prometheus.yml")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pc prometheusConfig
	if err := yaml.Unmarshal(data, &pc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	scraped := map[string]bool{}
	target := func(job, host string, port int) {
		if host == "localhost" || host == "127.0.0.1" {
			host = promSvc
		}
		listens, ok := st.listens[host]
		if !ok {
			t.Errorf("job %s: target %s:%d is not a service of the compose file", job, host, port)
			return
		}
		if ls := st.llmproxy[host]; ls != nil && port != ls.admin && port != ls.listen {
			t.Errorf("job %s: target %s:%d, but %s serves /metrics on %d", job, host, port, host, ls.admin)
		}
		if !slices.Contains(listens, port) {
			t.Errorf("job %s: target %s:%d, but %s listens on %v", job, host, port, host, listens)
		}
		scraped[host] = true
	}
	for _, sc := range pc.ScrapeConfigs {
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("job %s: metrics_path %s", sc.JobName, sc.MetricsPath)
		}
		for _, s := range sc.StaticConfigs {
			for _, tg := range s.Targets {
				h, p := portOf(t, "job "+sc.JobName, tg)
				target(sc.JobName, h, p)
			}
		}
		for _, d := range sc.DNSSDConfigs {
			if d.Type != "A" && d.Type != "AAAA" {
				t.Errorf("job %s: dns_sd type %q; Docker's DNS answers A records", sc.JobName, d.Type)
			}
			for _, n := range d.Names {
				target(sc.JobName, n, d.Port)
			}
		}
	}
	for name := range st.llmproxy {
		if !scraped[name] {
			t.Errorf("service %s is not scraped by Prometheus", name)
		}
	}
}

// exportedMetrics are the "llmproxy_…" string literals of the non-test Go
// files under services/ and cmd/.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	root := repoRoot(t)
	names := map[string]bool{}
	metric := regexp.MustCompile(`^llmproxy_[a-z0-9_]+$`)
	for _, dir := range []string{"services", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, err := strconv.Unquote(lit.Value); err == nil && metric.MatchString(s) {
						names[s] = true
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(names) == 0 {
		t.Fatal("no llmproxy_ metric names found in services/ and cmd/")
	}
	return names
}

func TestComposeDashboardMetricsExist(t *testing.T) {
	st := loadStack(t)
	known := exportedMetrics(t)
	exists := func(name string) bool {
		if known[name] {
			return true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && known[base] {
				return true
			}
		}
		return false
	}
	dashDir := filepath.Join(st.dir, "grafana", "dashboards")
	files, err := filepath.Glob(filepath.Join(dashDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s", dashDir)
	}
	dsUIDs := provisionedDatasources(t, st)
	used := regexp.MustCompile(`\bllmproxy_[a-z0-9_]+`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var dash map[string]any
		if err := json.Unmarshal(data, &dash); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var exprs []string
		walkJSON(dash, func(key string, v any) {
			switch key {
			case "expr":
				if s, ok := v.(string); ok {
					exprs = append(exprs, s)
				}
			case "datasource":
				if m, ok := v.(map[string]any); ok && m["type"] == "prometheus" {
					if uid, _ := m["uid"].(string); !dsUIDs[uid] {
						t.Errorf("%s: datasource uid %q is not provisioned (have %v)", filepath.Base(f), uid, dsUIDs)
					}
				}
			}
		})
		if len(exprs) == 0 {
			t.Errorf("%s: no queries", filepath.Base(f))
		}
		seen := map[string]bool{}
		for _, m := range used.FindAllString(string(data), -1) {
			if seen[m] {
				continue
			}
			seen[m] = true
			if !exists(m) {
				t.Errorf("%s: metric %s is not exported by the code (services/, cmd/)", filepath.Base(f), m)
			}
		}
		// The panels the issue asks for.
		all := strings.Join(exprs, "\n")
		for _, want := range []string{
			"llmproxy_requests_total", "llmproxy_latency_ms_bucket", "llmproxy_ttft_ms_bucket",
			"llmproxy_usage_tokens_total", "llmproxy_backend_up", "llmproxy_admission_rejections_total",
			"llmproxy_events_outbox_depth", "llmproxy_meter_lag", "llmproxy_webhook_retries_total",
			"llmproxy_webhook_dlq_depth",
		} {
			if !strings.Contains(all, want) {
				t.Errorf("%s: no panel queries %s", filepath.Base(f), want)
			}
		}
	}

	// The dashboards provider reads the directory grafana mounts them at.
	graf := ""
	for _, name := range st.names() {
		if strings.HasPrefix(st.file.Services[name].Image, "grafana/") {
			graf = name
		}
	}
	provDir, ok := st.file.Services[graf].hostFile(t, graf, st.dir, "/etc/grafana/provisioning/dashboards")
	if !ok {
		t.Fatal("grafana: dashboards provisioning is not mounted")
	}
	provs, _ := filepath.Glob(filepath.Join(provDir, "*.y*ml"))
	if len(provs) == 0 {
		t.Fatalf("no dashboard providers in %s", provDir)
	}
	for _, p := range provs {
		var prov struct {
			Providers []struct {
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		data, _ := os.ReadFile(p)
		if err := yaml.Unmarshal(data, &prov); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, pr := range prov.Providers {
			host, ok := st.file.Services[graf].hostFile(t, graf, st.dir, pr.Options.Path)
			if !ok {
				t.Errorf("%s: provider path %s is not mounted in grafana", p, pr.Options.Path)
				continue
			}
			if filepath.Clean(host) != filepath.Clean(dashDir) {
				t.Errorf("%s: provider path %s is %s on the host, want %s", p, pr.Options.Path, host, dashDir)
			}
		}
	}
}

// provisionedDatasources are the uids of grafana's provisioned datasources,
// checked to point at the stack's Prometheus.
func provisionedDatasources(t *testing.T, st *stack) map[string]bool {
	t.Helper()
	graf := ""
	for _, name := range st.names() {
		if strings.HasPrefix(st.file.Services[name].Image, "grafana/") {
			graf = name
		}
	}
	if graf == "" {
		t.Fatal("no grafana service")
	}
	dir, ok := st.file.Services[graf].hostFile(t, graf, st.dir, "/etc/grafana/provisioning/datasources")
	if !ok {
		t.Fatal("grafana: datasources provisioning is not mounted")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.y*ml"))
	uids := map[string]bool{}
	for _, f := range files {
		var ds struct {
			Datasources []struct {
				UID  string `yaml:"uid"`
				Type string `yaml:"type"`
				URL  string `yaml:"url"`
			} `yaml:"datasources"`
		}
		data, _ := os.ReadFile(f)
		if err := yaml.Unmarshal(data, &ds); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, d := range ds.Datasources {
			uids[d.UID] = true
			u, err := url.Parse(d.URL)
			if err != nil {
				t.Errorf("%s: url %q: %v", f, d.URL, err)
				continue
			}
			port, _ := strconv.Atoi(u.Port())
			if !slices.Contains(st.listens[u.Hostname()], port) {
				t.Errorf("%s: datasource url %s is not a service port of the stack", f, d.URL)
			}
		}
	}
	if len(uids) == 0 {
		t.Fatalf("no datasources provisioned in %s", dir)
	}
	return uids
}

func walkJSON(v any, fn func(key string, v any)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			fn(k, e)
			walkJSON(e, fn)
		}
	case []any:
		for _, e := range x {
			walkJSON(e, fn)
		}
	}
}

// TestNATSStreamDefinitions keeps deploy/nats/streams/*.json equal to the
// streams the processes create (pkg/events), with the cluster's 3 replicas.
func TestNATSStreamDefinitions(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "deploy", "nats", "streams")
	o := events.StreamOptions{Replicas: 3}
	for _, want := range []jetstream.StreamConfig{events.StreamConfig(o), events.DLQStreamConfig(o)} {
		path := filepath.Join(dir, want.Name+".json")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("stream %s: %v", want.Name, err)
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		var got jetstream.StreamConfig
		if err := dec.Decode(&got); err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			g, _ := json.MarshalIndent(got, "", "  ")
			w, _ := json.MarshalIndent(want, "", "  ")
			t.Errorf("%s differs from pkg/events:\n got %s\nwant %s", path, g, w)
		}
		// The contract's fields are written out, not left to defaults.
		var raw map[string]any
		_ = json.Unmarshal(data, &raw)
		for _, k := range []string{"name", "subjects", "storage", "retention", "max_age", "duplicate_window", "num_replicas"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("%s: %q is not set", path, k)
			}
		}
	}
}

// TestNATSServerConfigs parses the server configs with nats-server's own
// parser: JetStream on, and a 3-node cluster whose routes reach each node.
func TestNATSServerConfigs(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "deploy", "nats")
	single, err := server.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !single.JetStream || single.StoreDir == "" || single.JetStreamMaxMemory <= 0 || single.JetStreamMaxStore <= 0 {
		t.Errorf("nats.conf: want JetStream with store_dir, max_memory_store and max_file_store")
	}
	if single.HTTPPort == 0 {
		t.Errorf("nats.conf: no monitoring port (the compose healthcheck uses /healthz)")
	}
	// A gateway's outbox keeps an event 2 s after its ack
	// (gateway.OutboxDurableDelay): the server must fsync well within it.
	const maxSync = time.Second
	if single.SyncInterval <= 0 || single.SyncInterval > maxSync {
		t.Errorf("nats.conf: sync_interval %v, want at most %v", single.SyncInterval, maxSync)
	}

	files, _ := filepath.Glob(filepath.Join(dir, "cluster", "n*.conf"))
	if len(files) != 3 {
		t.Fatalf("want 3 cluster node configs, have %d", len(files))
	}
	clusterPorts := map[int]string{}
	var nodes []*server.Options
	seen := map[string]string{}
	for _, f := range files {
		o, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Base(f)
		if !o.JetStream || o.StoreDir == "" {
			t.Errorf("%s: JetStream with a store_dir is required", base)
		}
		if o.SyncInterval <= 0 || o.SyncInterval > maxSync {
			t.Errorf("%s: sync_interval %v, want at most %v", base, o.SyncInterval, maxSync)
		}
		if o.Cluster.Name != "llmproxy" {
			t.Errorf("%s: cluster name %q, want llmproxy", base, o.Cluster.Name)
		}
		for what, v := range map[string]string{
			"server_name": o.ServerName, "store_dir": o.StoreDir,
			"port": strconv.Itoa(o.Port), "cluster port": strconv.Itoa(o.Cluster.Port), "http port": strconv.Itoa(o.HTTPPort),
		} {
			key := what + "=" + v
			if other, dup := seen[key]; dup {
				t.Errorf("%s and %s share %s %s", other, base, what, v)
			}
			seen[key] = base
		}
		clusterPorts[o.Cluster.Port] = base
		nodes = append(nodes, o)
	}
	for i, o := range nodes {
		base := filepath.Base(files[i])
		reached := map[string]bool{}
		for _, r := range o.Routes {
			_, port := portOf(t, base+" route", r.Host)
			if n, ok := clusterPorts[port]; ok {
				reached[n] = true
			} else {
				t.Errorf("%s: route %s reaches no node's cluster port", base, r)
			}
		}
		if len(reached) != 3 {
			t.Errorf("%s: routes reach %d of the 3 nodes", base, len(reached))
		}
	}
}
