// Command warren-image writes Warren's container image — the static
// warren-agent, warren-controller, warren-cni and warrenctl binaries and
// nothing else — as a docker-archive tarball:
//
//	warren-image -bin bin/static -ref ghcr.io/warren-mesh/warren:dev -o bin/warren-image.tar
//
// Load it on a node with `ctr -n k8s.io images import`, or push it with any
// registry tool.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/warren-mesh/warren/deploy/image"
)

// Binaries are the commands the image carries, in /usr/local/bin.
var Binaries = []string{"warren-agent", "warren-controller", "warren-cni", "warrenctl"}

func main() {
	bin := flag.String("bin", "bin/static", "directory of the statically linked binaries")
	ref := flag.String("ref", "ghcr.io/warren-mesh/warren:dev", "image reference to tag the image with")
	out := flag.String("o", "bin/warren-image.tar", "output tarball")
	flag.Parse()
	if err := run(*bin, *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "warren-image:", err)
		os.Exit(1)
	}
}

func run(bin, ref, out string) error {
	spec := image.Spec{Ref: ref, Entrypoint: []string{"/usr/local/bin/warren-agent"}, User: "0"}
	for _, b := range Binaries {
		spec.Files = append(spec.Files, image.File{Path: "/usr/local/bin/" + b, Source: filepath.Join(bin, b)})
	}
	if err := image.Write(out, spec); err != nil {
		return err
	}
	fmt.Println("wrote", out, ref)
	return nil
}
