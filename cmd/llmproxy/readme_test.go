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
