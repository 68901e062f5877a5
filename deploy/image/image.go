package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one regular file placed in the image.
type File struct {
	// Path inside the image, absolute (e.g. /usr/local/bin/warren-agent).
	Path string
	// Source is the file on the build host.
	Source string
	// Mode of the file in the image; 0 means 0755.
	Mode int64
}

// Spec describes an image.
type Spec struct {
	// Ref is the image reference it is tagged with, e.g.
	// ghcr.io/warren-mesh/warren:dev.
	Ref        string
	Files      []File
	Entrypoint []string
	Env        []string
	// User is the image's default user, e.g. "0" or "65532".
	User string
}

// epoch stamps every file and the image config, so that the same binaries
// always give the same image digest.
var epoch = time.Unix(0, 0).UTC()

// Build assembles the image: one layer holding the files (and the
// directories leading to them, plus /tmp), on no base image.
func Build(s Spec) (v1.Image, error) {
	if len(s.Files) == 0 {
		return nil, errors.New("image: no files")
	}
	layer, err := layerOf(s.Files)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("image: adding layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image: reading config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = runtime.GOARCH, "linux"
	cf.Created = v1.Time{Time: epoch}
	env := append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, s.Env...)
	cf.Config = v1.Config{Entrypoint: s.Entrypoint, Env: env, User: s.User}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("image: setting config: %w", err)
	}
	return img, nil
}

// Write builds the image and writes it to out as a docker-archive tarball
// tagged s.Ref (written to a temporary file and renamed).
func Write(out string, s Spec) error {
	tag, err := name.NewTag(s.Ref)
	if err != nil {
		return fmt.Errorf("image: reference %q: %w", s.Ref, err)
	}
	img, err := Build(s)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	defer os.Remove(tmp)
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		return fmt.Errorf("image: writing %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return nil
}

// layerOf writes the files into one uncompressed tar layer held in memory:
// the binaries are tens of MB, and an opener over bytes lets the library
// hash and compress the layer more than once.
func layerOf(files []File) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{"tmp": true}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("image: path %q must be absolute and clean", f.Path)
		}
		for d := path.Dir(strings.TrimPrefix(f.Path, "/")); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	slices.Sort(names) // parents sort before their children
	for _, d := range names {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: mode, ModTime: epoch}); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f.Source)
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o755
		}
		hdr := &tar.Header{Name: strings.TrimPrefix(f.Path, "/"), Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	return layer, nil
}
