package image

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestWriteRoundTrip(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "prog")
	if err := os.WriteFile(bin, []byte("#!/bin/true\nbinary bytes"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	spec := Spec{
		Ref:        "example.test/warren:t1",
		Files:      []File{{Path: "/usr/local/bin/prog", Source: bin}},
		Entrypoint: []string{"/usr/local/bin/prog"},
		User:       "0",
	}
	if err := Write(out, spec); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(spec.Ref)
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("reading the written image back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, spec.Entrypoint) || cf.Config.User != "0" || cf.OS != "linux" {
		t.Errorf("config = %+v, want entrypoint %v user 0 os linux", cf.Config, spec.Entrypoint)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want exactly one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	got := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = string(b)
	}
	if got["usr/local/bin/prog"] != "#!/bin/true\nbinary bytes" {
		t.Errorf("layer file = %q", got["usr/local/bin/prog"])
	}
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/", "tmp/"} {
		if _, ok := got[d]; !ok {
			t.Errorf("layer lacks directory %s", d)
		}
	}

	// Same inputs, same digest: images are reproducible.
	img2, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("digest changed between builds: %v vs %v", d1, d2)
	}
}

func TestBuildRefusesBadInput(t *testing.T) {
	for name, s := range map[string]Spec{
		"no files":      {Ref: "x/y:z"},
		"relative path": {Ref: "x/y:z", Files: []File{{Path: "bin/x", Source: "/dev/null"}}},
		"unclean path":  {Ref: "x/y:z", Files: []File{{Path: "/bin/../x", Source: "/dev/null"}}},
		"missing file":  {Ref: "x/y:z", Files: []File{{Path: "/bin/x", Source: "/nonexistent/file"}}},
	} {
		if _, err := Build(s); err == nil {
			t.Errorf("%s: Build succeeded, want an error", name)
		}
	}
	if err := Write(filepath.Join(t.TempDir(), "x.tar"), Spec{Ref: "Bad Ref", Files: []File{{Path: "/x", Source: "/dev/null"}}}); err == nil {
		t.Error("Write with a bad reference succeeded")
	}
}
