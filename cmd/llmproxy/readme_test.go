package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway"
)

// repoRoot is the repository, seen from this package's directory.
const repoRoot = "../.."

// yamlBlock finds the ```yaml blocks of a markdown file.
var yamlBlock = regexp.MustCompile("(?ms)^```yaml\n(.*?)^```")

// wholeConfig matches a block with a top-level backends: key.
var wholeConfig = regexp.MustCompile(`(?m)^backends:`)

// envRef finds the ${NAME} references of a block.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)`)

// TestDocsConfigExamplesLoad: every YAML example of the README and docs/
// that is a whole LLMProxy config (one with a top-level backends: key)
// passes `llmproxy config check`, with the environment variables it
// names set. A relative path in an example (lua.scripts) is the
// repository's.
func TestDocsConfigExamplesLoad(t *testing.T) {
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := 0
	for _, doc := range append([]string{filepath.Join(repoRoot, "README.md")}, docs...) {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range yamlBlock.FindAllSubmatchIndex(data, -1) {
			block := data[m[2]:m[3]]
			if !wholeConfig.Match(block) {
				continue // a fragment, or another tool's config
			}
			line := 1 + bytes.Count(data[:m[2]], []byte("\n"))
			name := fmt.Sprintf("%s:%d", filepath.Base(doc), line)
			t.Run(name, func(t *testing.T) {
				for _, ref := range envRef.FindAllSubmatch(block, -1) {
					t.Setenv(string(ref[1]), "example-"+strings.ToLower(string(ref[1])))
				}
				// Named as if it sat at the repository's root, so that
				// relative paths resolve there.
				cfg, err := config.Parse(block, filepath.Join(repoRoot, "example.yaml"))
				if err == nil {
					err = checkRedact(cfg)
				}
				if err == nil {
					err = gateway.CheckScripts(cfg.Lua.Scripts)
				}
				var list *config.Errors
				if errors.As(err, &list) {
					for _, e := range list.List {
						e.File = doc // lines of the markdown file
						if e.Line > 0 {
							e.Line += line - 1
						}
					}
				}
				if err != nil {
					t.Fatalf("the example at %s does not load:\n%v", name, err)
				}
			})
			if doc == filepath.Join(repoRoot, "README.md") {
				readme++
			}
		}
	}
	if readme == 0 {
		t.Fatal("found no complete config example in README.md")
	}
}

// shippedConfigs are the LLMProxy configs of examples/ and deploy/, with
// the targets each is run as: the quick start's single binary, the compose
// stack's gateways, meters and notifier.
var shippedConfigs = map[string][]string{
	"examples/quickstart.yaml":     {"all"},
	"deploy/compose/llmproxy.yaml": {"gateway", "meter", "notifier"},
}

// TestShippedConfigsCheck: every LLMProxy config under examples/ and
// deploy/ (a YAML file with a top-level backends: key) passes `llmproxy
// config check --target T` for each target it is run as, with the
// environment variables it names set. A config found there but missing
// from shippedConfigs fails the test, so that a new one is checked too.
func TestShippedConfigsCheck(t *testing.T) {
	found := map[string]bool{}
	for _, dir := range []string{"examples", "deploy"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if wholeConfig.Match(data) {
				rel, err := filepath.Rel(repoRoot, path)
				if err != nil {
					return err
				}
				found[filepath.ToSlash(rel)] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for rel := range found {
		if _, ok := shippedConfigs[rel]; !ok {
			t.Errorf("%s is an LLMProxy config that shippedConfigs does not list: add it with the targets it runs as", rel)
		}
	}
	for rel, targets := range shippedConfigs {
		if !found[rel] {
			t.Errorf("%s is listed in shippedConfigs but is not an LLMProxy config under examples/ or deploy/", rel)
			continue
		}
		path := filepath.Join(repoRoot, filepath.FromSlash(rel))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range targets {
			t.Run(rel+"/"+target, func(t *testing.T) {
				for _, ref := range envRef.FindAllSubmatch(data, -1) {
					t.Setenv(string(ref[1]), "example-"+strings.ToLower(string(ref[1])))
				}
				if err := checkConfig(path, target); err != nil {
					t.Fatalf("llmproxy config check --target %s %s:\n%v", target, rel, err)
				}
			})
		}
	}
}
