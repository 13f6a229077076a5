package e2e

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goWorkUse finds the module directories of go.work's use directives.
var goWorkUse = regexp.MustCompile(`(?m)^\s*(?:use\s+)?(\./[^\s()]*)\s*$`)

// TestDockerfileCopiesEveryModule: the Dockerfile's dependency layer
// copies the go.mod and go.sum of every module go.work uses before it runs
// `go mod download`. go.work is copied into that layer, and the go command
// refuses to run while a module it lists has no go.mod, so one left out
// fails `docker build` at that step.
func TestDockerfileCopiesEveryModule(t *testing.T) {
	root := repoRoot(t)
	work, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	var mods []string
	for _, m := range goWorkUse.FindAllStringSubmatch(string(work), -1) {
		mods = append(mods, path.Clean(m[1]))
	}
	if len(mods) == 0 {
		t.Fatal("go.work names no module")
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	before, _, ok := strings.Cut(string(df), "go mod download")
	if !ok {
		t.Fatal("the Dockerfile runs no go mod download")
	}
	copied := map[string]bool{}
	for _, line := range strings.Split(before, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "COPY" {
			continue
		}
		for _, src := range f[1 : len(f)-1] {
			if !strings.HasPrefix(src, "--") {
				copied[path.Clean(src)] = true
			}
		}
	}
	if !copied["go.work"] {
		t.Fatal("the Dockerfile does not copy go.work before go mod download; this check assumes it does")
	}
	for _, m := range mods {
		for _, f := range []string{"go.mod", "go.sum"} {
			if p := path.Join(m, f); !copied[p] {
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(p))); err == nil {
					t.Errorf("go.work uses %s, but the Dockerfile does not copy %s before go mod download", m, p)
				}
			}
		}
	}
}
