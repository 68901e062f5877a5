package main

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/warren-mesh/warren/admin"
)

// filter narrows the tables.
type filter struct {
	namespace string // empty: all
}

func (f filter) keep(namespace string) bool { return f.namespace == "" || f.namespace == namespace }

// printTables writes the tables of kind ("workloads", ..., or "all") for d.
func printTables(w io.Writer, kind string, d *admin.Dump, f filter) error {
	sections := []struct {
		kind, title string
		print       func(*tabwriter.Writer, *admin.Dump, filter)
	}{
		{"workloads", "WORKLOADS", printWorkloads},
		{"services", "SERVICES", printServices},
		{"policies", "POLICIES", printPolicies},
		{"certificates", "CERTIFICATES", printCertificates},
		{"connections", "CONNECTIONS", printConnections},
	}
	for i, s := range sections {
		if kind != "all" && kind != s.kind {
			continue
		}
		if kind == "all" {
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "== %s\n", s.title)
		}
		// Two spaces between columns keep cells with single spaces
		// ("Up", "Pending: ...") readable.
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		s.print(tw, d, f)
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("writing %s: %w", s.kind, err)
		}
	}
	return nil
}

func printWorkloads(w *tabwriter.Writer, d *admin.Dump, f filter) {
	wls := slices.Clone(d.Workloads)
	slices.SortFunc(wls, func(a, b admin.Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
	fmt.Fprintln(w, "NAMESPACE\tNAME\tADDRESSES\tNODE\tPROTOCOL\tIDENTITY\tCAPTURE\tPOLICIES")
	for _, wl := range wls {
		if !f.keep(wl.Namespace) {
			continue
		}
		capture := "-"
		if st, ok := d.WorkloadState[wl.UID]; ok {
			capture = podState(st)
		}
		id := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", wl.TrustDomain, wl.Namespace, wl.ServiceAccount)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wl.Namespace, wl.Name, list(wl.WorkloadIPs), dash(wl.Node),
			wl.Protocol, id, capture, list(wl.AuthorizationPolicies))
	}
}

func podState(st admin.WorkloadState) string {
	switch {
	case st.State == "":
		return "-"
	case st.Pending != "":
		return st.State + ": " + st.Pending
	}
	return st.State
}

func printServices(w *tabwriter.Writer, d *admin.Dump, f filter) {
	names := map[string]string{}
	for _, wl := range d.Workloads {
		names[wl.UID] = wl.Name
	}
	svcs := slices.Clone(d.Services)
	slices.SortFunc(svcs, func(a, b admin.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Hostname, b.Hostname))
	})
	fmt.Fprintln(w, "NAMESPACE\tNAME\tHOSTNAME\tVIPS\tPORTS\tENDPOINTS")
	for _, s := range svcs {
		if !f.keep(s.Namespace) {
			continue
		}
		var vips []string
		for _, v := range s.VIPs {
			_, ip, found := strings.Cut(v, "/") // "<network>/<address>"
			if !found {
				ip = v
			}
			vips = append(vips, ip)
		}
		var ports []string
		for _, p := range slices.Sorted(maps.Keys(s.Ports)) {
			t := s.Ports[p]
			switch {
			case t == 0 || t == p:
				ports = append(ports, strconv.Itoa(int(p)))
			default:
				ports = append(ports, fmt.Sprintf("%d->%d", p, t))
			}
		}
		var eps []string
		for _, uid := range slices.Sorted(maps.Keys(s.Endpoints)) {
			eps = append(eps, cmp.Or(names[uid], uid))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, s.Hostname, list(vips), list(ports), abbreviate(eps, 3))
	}
}

// abbreviate lists up to n items and counts the rest.
func abbreviate(items []string, n int) string {
	if len(items) <= n {
		return list(items)
	}
	return fmt.Sprintf("%s +%d more", strings.Join(items[:n], ","), len(items)-n)
}

func printPolicies(w *tabwriter.Writer, d *admin.Dump, f filter) {
	pols := slices.Clone(d.Policies)
	slices.SortFunc(pols, func(a, b admin.Policy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	fmt.Fprintln(w, "NAMESPACE\tNAME\tACTION\tSCOPE\tRULES")
	for _, p := range pols {
		if !f.keep(p.Namespace) {
			continue
		}
		action := p.Action
		if p.DryRun {
			action += " (dry run)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, action, p.Scope, rulesText(p.Rules))
	}
}

// rulesText renders rules on one line: rules are separated by " | ", the
// clauses of a rule (all must match) by " and ", the matches of a clause
// (any may match) by " or ".
func rulesText(rules [][][]admin.Match) string {
	if len(rules) == 0 {
		return "(matches nothing)"
	}
	var rs []string
	for _, clauses := range rules {
		var cs []string
		for _, matches := range clauses {
			var ms []string
			for _, m := range matches {
				ms = append(ms, matchText(m))
			}
			c := strings.Join(ms, " or ")
			if len(ms) > 1 && len(clauses) > 1 {
				c = "(" + c + ")"
			}
			cs = append(cs, c)
		}
		rs = append(rs, cmp.Or(strings.Join(cs, " and "), "(any)"))
	}
	return strings.Join(rs, " | ")
}

func matchText(m admin.Match) string {
	var parts []string
	add := func(key string, vals []string) {
		if len(vals) > 0 {
			parts = append(parts, key+"="+strings.Join(vals, ","))
		}
	}
	strs := func(ms []admin.StringMatch) []string {
		var out []string
		for _, s := range ms {
			out = append(out, s.String())
		}
		return out
	}
	sas := func(ms []admin.ServiceAccountMatch) []string {
		var out []string
		for _, s := range ms {
			out = append(out, s.Namespace+"/"+s.ServiceAccount)
		}
		return out
	}
	ports := func(ps []uint16) []string {
		var out []string
		for _, p := range ps {
			out = append(out, strconv.Itoa(int(p)))
		}
		return out
	}
	add("ns", strs(m.Namespaces))
	add("!ns", strs(m.NotNamespaces))
	add("sa", sas(m.ServiceAccounts))
	add("!sa", sas(m.NotServiceAccounts))
	add("principal", strs(m.Principals))
	add("!principal", strs(m.NotPrincipals))
	add("src", m.SourceIPs)
	add("!src", m.NotSourceIPs)
	add("dst", m.DestinationIPs)
	add("!dst", m.NotDestinationIPs)
	add("port", ports(m.DestinationPorts))
	add("!port", ports(m.NotDestinationPorts))
	if len(parts) == 0 {
		return "(any)"
	}
	return strings.Join(parts, " ")
}

func printCertificates(w *tabwriter.Writer, d *admin.Dump, f filter) {
	certs := slices.Clone(d.Certificates)
	slices.SortFunc(certs, func(a, b admin.Certificate) int { return cmp.Compare(a.Identity, b.Identity) })
	fmt.Fprintln(w, "IDENTITY\tSTATE\tCERT\tSERIAL\tNOT BEFORE\tNOT AFTER")
	for _, c := range certs {
		// Identities are spiffe://<trust domain>/ns/<namespace>/sa/<account>.
		if f.namespace != "" && !strings.Contains(c.Identity, "/ns/"+f.namespace+"/sa/") {
			continue
		}
		if len(c.CertChain) == 0 {
			fmt.Fprintf(w, "%s\t%s\t-\t-\t-\t-\n", c.Identity, c.State)
			continue
		}
		for i, cert := range c.CertChain {
			kind := "intermediate"
			if i == 0 {
				kind = "leaf"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Identity, c.State, kind, hexSerial(cert.SerialNumber), dash(cert.ValidFrom), dash(cert.ExpirationTime))
		}
		for _, cert := range c.RootCerts {
			fmt.Fprintf(w, "%s\t%s\troot\t%s\t%s\t%s\n", c.Identity, c.State, hexSerial(cert.SerialNumber), dash(cert.ValidFrom), dash(cert.ExpirationTime))
		}
	}
}

// hexSerial shows the dump's decimal serial in hex, the form the agent logs.
func hexSerial(dec string) string {
	n, ok := new(big.Int).SetString(dec, 10)
	if !ok {
		return dash(dec)
	}
	return n.Text(16)
}

func printConnections(w *tabwriter.Writer, d *admin.Dump, f filter) {
	states := slices.Collect(maps.Values(d.WorkloadState))
	slices.SortFunc(states, func(a, b admin.WorkloadState) int {
		return cmp.Or(cmp.Compare(a.Info.Namespace, b.Info.Namespace), cmp.Compare(a.Info.Name, b.Info.Name))
	})
	fmt.Fprintln(w, "WORKLOAD\tDIRECTION\tSOURCE\tDESTINATION\tTARGET\tPROTOCOL\tPEER IDENTITY\tSENT\tRECEIVED")
	for _, st := range states {
		if !f.keep(st.Info.Namespace) || st.Connections == nil {
			continue
		}
		name := st.Info.Name + "." + st.Info.Namespace
		for _, c := range st.Connections.Inbound {
			fmt.Fprintf(w, "%s\tinbound\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", name, c.Src, c.OriginalDst, dash(c.ActualDst), c.Protocol, dash(c.SrcIdentity), c.Sent, c.Received)
		}
		for _, c := range st.Connections.Outbound {
			fmt.Fprintf(w, "%s\toutbound\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", name, c.Src, c.OriginalDst, dash(c.ActualDst), c.Protocol, dash(c.DstIdentity), c.Sent, c.Received)
		}
	}
}

func list(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	return strings.Join(items, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
