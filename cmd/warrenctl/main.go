// Command warrenctl is Warren's command-line tool: it inspects a running
// agent through its admin API and runs the local demo.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// command is one warrenctl subcommand.
type command struct {
	name string
	help string
	run  func(args []string, stdout io.Writer) error
}

func commands() []command {
	inspect := func(kind string) func([]string, io.Writer) error {
		return func(args []string, out io.Writer) error { return runInspect(kind, args, out) }
	}
	return []command{
		{"workloads", "list the workloads the agent knows, and the state of the pods it captures", inspect("workloads")},
		{"services", "list services with their VIPs, ports and endpoints", inspect("services")},
		{"policies", "list authorization policies and their rules", inspect("policies")},
		{"certificates", "list the identities in use and their certificates", inspect("certificates")},
		{"connections", "list the open connections of each captured pod", inspect("connections")},
		{"all", "all of the above", inspect("all")},
		{"log-level", "show or change the agent's log levels: log-level [SPEC] [--reset] (SPEC: info, proxy:debug,hbone=warn, ...)", runLogLevel},
		{"demo", "build a two-node cluster from network namespaces, run Warren agents on it, send traffic between pods and show each connection (root)",
			func(args []string, _ io.Writer) error { return runDemo(args) }},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, "usage: warrenctl <command> [flags]\n\ncommands:\n")
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.help)
	}
	tw.Flush()
	fmt.Fprint(w, "\nThe inspection commands read a running agent's admin API (default 127.0.0.1:15000),\n"+
		"or a saved /config_dump with --file; --netns reaches an agent in another network namespace.\n"+
		"Run warrenctl <command> -h for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage(os.Stdout)
		return
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(os.Args[2:], os.Stdout)
		switch {
		case errors.Is(err, flag.ErrHelp):
			return
		case err != nil:
			fmt.Fprintln(os.Stderr, "warrenctl:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Fprintf(os.Stderr, "warrenctl: unknown command %q\n\n", name)
	usage(os.Stderr)
	os.Exit(2)
}

// parseInterspersed parses flags that may come before or after positional
// arguments ("log-level debug --admin x"), returning the positionals.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// atMost checks the number of positional arguments.
func atMost(cmd string, pos []string, n int) error {
	if len(pos) > n {
		return fmt.Errorf("%s: unexpected arguments %s", cmd, strings.Join(pos[n:], " "))
	}
	return nil
}
