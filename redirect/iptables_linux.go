package redirect

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
)

// IPTables is the fallback backend for nodes whose pods already use
// iptables (legacy or nf_tables flavour): it adds Warren's own chains
// (WARREN_PRERT, WARREN_OUTPUT in mangle and nat) and one jump to each from
// the built-in chain, with iptables-restore --noflush so the pod's other
// rules are left alone.
type IPTables struct {
	cfg Config
	log *slog.Logger
	bin map[Family]iptBinaries
}

type iptBinaries struct{ save, restore string }

var _ Redirector = (*IPTables)(nil)

// NewIPTables checks cfg and finds iptables-save/-restore and their ip6
// twins in PATH; a missing binary yields an error wrapping ErrNotSupported.
func NewIPTables(cfg Config, log *slog.Logger) (*IPTables, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid redirect config: %w", err)
	}
	bin := map[Family]iptBinaries{}
	for _, f := range allFamilies {
		prefix := "iptables"
		if f == IPv6 {
			prefix = "ip6tables"
		}
		var b iptBinaries
		for _, x := range []struct {
			dst  *string
			name string
		}{{&b.save, prefix + "-save"}, {&b.restore, prefix + "-restore"}} {
			p, err := exec.LookPath(x.name)
			if err != nil {
				return nil, fmt.Errorf("finding %s: %w: %w", x.name, ErrNotSupported, err)
			}
			*x.dst = p
		}
		bin[f] = b
	}
	return &IPTables{cfg: cfg, log: log.With("component", "redirect", "backend", "iptables"), bin: bin}, nil
}

// Apply enters pod.NetNS and, per family the pod has, (1) installs the
// fwmark rule and the local route in table RouteTable, (2) reads the
// tables with iptables-save and, unless Warren's chains and jumps already
// are exactly the desired ones, rewrites them with one iptables-restore
// --noflush (atomic per table). Families the pod lacks are cleaned up. Safe
// to retry.
func (i *IPTables) Apply(ctx context.Context, pod Pod) error {
	return applyPod(ctx, i.cfg, i.log, pod, iptFamilies{i})
}

// Remove enters pod.NetNS and, per family, deletes the jumps into Warren's
// chains and the chains, then the fwmark rule and the routes of table
// RouteTable. The built-in chains stay (iptables cannot delete them), empty
// if Warren was their only user. Safe to retry.
func (i *IPTables) Remove(ctx context.Context, pod Pod) error {
	return removePod(ctx, i.cfg, i.log, pod, iptFamilies{i})
}

type iptFamilies struct{ *IPTables }

// iptState is what iptables-save shows of one family: per table, the
// chains and the rule specs (without "-A ") in order.
type iptState map[string]*iptTable

type iptTable struct {
	chains []string
	rules  []string
}

func parseIPTablesSave(out []byte) iptState {
	st := iptState{}
	var cur *iptTable
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			cur = &iptTable{}
			st[line[1:]] = cur
		case cur == nil:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			cur.chains = append(cur.chains, name)
		case strings.HasPrefix(line, "-A "):
			cur.rules = append(cur.rules, line[len("-A "):])
		}
	}
	return st
}

func (t *iptTable) count(spec string) int {
	if t == nil {
		return 0
	}
	n := 0
	for _, r := range t.rules {
		if r == spec {
			n++
		}
	}
	return n
}

func (t *iptTable) hasChain(name string) bool {
	return t != nil && slices.Contains(t.chains, name)
}

// chainRules returns the specs of the rules in chain, without the chain name.
func (t *iptTable) chainRules(chain string) []string {
	if t == nil {
		return nil
	}
	var out []string
	for _, r := range t.rules {
		if rest, ok := strings.CutPrefix(r, chain+" "); ok {
			out = append(out, rest)
		}
	}
	return out
}

func (i iptFamilies) run(ctx context.Context, f Family, path string, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The child is forked from the calling thread, which is inside the pod
	// netns, so the command works on the pod's tables.
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("running %s for %s: %w: %s", path, f, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func (i iptFamilies) save(ctx context.Context, f Family) (iptState, error) {
	out, err := i.run(ctx, f, i.bin[f].save, nil)
	if err != nil {
		return nil, err
	}
	return parseIPTablesSave(out), nil
}

// restore feeds input to iptables-restore. --noflush keeps every rule the
// input does not mention; --wait makes it queue behind other users of the
// xtables lock (legacy iptables) instead of failing.
func (i iptFamilies) restore(ctx context.Context, f Family, input string) error {
	_, err := i.run(ctx, f, i.bin[f].restore, []byte(input), "--noflush", "--wait=10")
	return err
}

func (i iptFamilies) applyFamily(ctx context.Context, f Family) (bool, error) {
	st, err := i.save(ctx, f)
	if err != nil {
		return false, err
	}
	want := desiredRules(i.cfg, f)
	current := true
	var dupJumps []string // "-D" lines for jumps that exist more than once
	for _, cr := range want {
		t := st[cr.chain.iptTable]
		jump := iptJumpSpec(cr.chain)
		if n := t.count(jump); n != 1 {
			current = false
			for ; n > 1; n-- {
				dupJumps = append(dupJumps, fmt.Sprintf("*%s\n-D %s\nCOMMIT\n", cr.chain.iptTable, jump))
			}
		}
		var specs []string
		for _, r := range cr.rules {
			specs = append(specs, iptRuleSpec(f, r))
		}
		if !t.hasChain(cr.chain.iptChain) || !slices.Equal(t.chainRules(cr.chain.iptChain), specs) {
			current = false
		}
	}
	if current {
		return false, nil
	}
	input := strings.Join(dupJumps, "") + renderIPTRestore(i.cfg, f, func(c chainSpec) bool {
		return st[c.iptTable].count(iptJumpSpec(c)) > 0
	})
	if err := i.restore(ctx, f, input); err != nil {
		return false, fmt.Errorf("programming %s rules: %w", f, err)
	}
	return true, nil
}

func (i iptFamilies) removeFamily(ctx context.Context, f Family) (bool, error) {
	st, err := i.save(ctx, f)
	if err != nil {
		return false, err
	}
	var b strings.Builder
	for _, table := range []string{"mangle", "nat"} {
		t := st[table]
		if t == nil {
			continue
		}
		var lines []string
		var chains []string
		for _, cs := range chainSpecs {
			if cs.iptTable != table {
				continue
			}
			for n := t.count(iptJumpSpec(cs)); n > 0; n-- {
				lines = append(lines, "-D "+iptJumpSpec(cs))
			}
			if t.hasChain(cs.iptChain) {
				chains = append(chains, cs.iptChain)
			}
		}
		// Flush all of Warren's chains before deleting any: they do not
		// refer to each other today, but deleting a referenced chain would
		// fail the whole table.
		for _, c := range chains {
			lines = append(lines, "-F "+c)
		}
		for _, c := range chains {
			lines = append(lines, "-X "+c)
		}
		if len(lines) > 0 {
			fmt.Fprintf(&b, "*%s\n%s\nCOMMIT\n", table, strings.Join(lines, "\n"))
		}
	}
	if b.Len() == 0 {
		return false, nil
	}
	if err := i.restore(ctx, f, b.String()); err != nil {
		return false, fmt.Errorf("removing %s rules: %w", f, err)
	}
	return true, nil
}
