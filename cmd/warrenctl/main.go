// Command warrenctl is Warren's command-line tool: for now it runs the local
// demo (a two-node cluster built from network namespaces).
package main

import (
	"fmt"
	"os"
)

const usage = `usage: warrenctl <command> [flags]

commands:
  demo    build a two-node cluster from network namespaces, run Warren agents
          on it, send traffic between pods and show each connection (root)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "demo":
		err = runDemo(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "warrenctl: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "warrenctl:", err)
		os.Exit(1)
	}
}
