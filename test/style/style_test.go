package style

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// repoRoot is the module root, two levels above this file.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate this test file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// TestOnePackageDoc: every package has exactly one file with a doc comment
// on its package clause ("Package x ..." or, for mains, "Command x ...").
func TestOnePackageDoc(t *testing.T) {
	root := repoRoot(t)
	docs := map[string][]string{} // dir -> files with a package doc
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin" || name == "bench-results") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		seen[dir] = true
		if f.Doc != nil {
			docs[dir] = append(docs[dir], filepath.Base(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir := range seen {
		rel, _ := filepath.Rel(root, dir)
		switch n := len(docs[dir]); {
		case n == 0:
			t.Errorf("package %s has no package doc comment", rel)
		case n > 1:
			t.Errorf("package %s has %d package doc comments (%v), want one", rel, n, docs[dir])
		}
	}
	if len(seen) < 10 {
		t.Fatalf("found only %d packages under %s; is the walk broken?", len(seen), root)
	}
}

// TestNoGrabBagPackages: packages are named for what they do.
func TestNoGrabBagPackages(t *testing.T) {
	root := repoRoot(t)
	for _, bad := range []string{"util", "utils", "common", "helpers", "misc"} {
		matches, _ := filepath.Glob(filepath.Join(root, "*", bad))
		top := filepath.Join(root, bad)
		if _, err := os.Stat(top); err == nil {
			matches = append(matches, top)
		}
		for _, m := range matches {
			t.Errorf("package directory %s: name packages for what they do", m)
		}
	}
}
