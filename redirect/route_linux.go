package redirect

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

// familyBackend programs the packet-filter half of the capture for one
// family. It runs on a thread already inside the pod netns. The bool reports
// whether anything changed.
type familyBackend interface {
	applyFamily(ctx context.Context, f Family) (bool, error)
	removeFamily(ctx context.Context, f Family) (bool, error)
}

// applyPod enters the pod netns and, for each family, installs routing and
// then the filter rules when the pod has that family, or removes the
// filter rules and then the routing when it does not. Routing goes in first
// so that by the time traffic is captured, replies to the agent's spoofed
// connections already have their way home.
func applyPod(ctx context.Context, cfg Config, log *slog.Logger, pod Pod, b familyBackend) error {
	fams := FamiliesOf(pod.IPs)
	if len(fams) == 0 {
		return fmt.Errorf("applying capture in netns %s: %w", pod.NetNS, ErrNoPodIPs)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("applying capture in netns %s: %w", pod.NetNS, err)
	}
	want := map[Family]bool{}
	for _, f := range fams {
		want[f] = true
	}
	err := netns.Do(pod.NetNS, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("opening rtnetlink: %w", err)
		}
		defer h.Delete()
		for _, f := range allFamilies {
			var routed, filtered bool
			if want[f] {
				if routed, err = applyRouting(h, cfg, f); err != nil {
					return err
				}
				if filtered, err = b.applyFamily(ctx, f); err != nil {
					return err
				}
			} else {
				if filtered, err = b.removeFamily(ctx, f); err != nil {
					return err
				}
				if routed, err = removeRouting(h, cfg, f); err != nil {
					return err
				}
			}
			if routed || filtered {
				log.Debug("capture changed", "netns", pod.NetNS, "family", f, "wanted", want[f], "routing", routed, "rules", filtered)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("applying capture in netns %s: %w", pod.NetNS, err)
	}
	return nil
}

// removePod enters the pod netns and removes, per family, the filter rules
// and then the routing. A netns that no longer exists holds nothing.
func removePod(ctx context.Context, cfg Config, log *slog.Logger, pod Pod, b familyBackend) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("removing capture in netns %s: %w", pod.NetNS, err)
	}
	ns, err := netns.Open(pod.NetNS)
	if errors.Is(err, fs.ErrNotExist) {
		log.Debug("netns gone, nothing to remove", "netns", pod.NetNS)
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing capture: %w", err)
	}
	defer ns.Close()
	err = ns.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("opening rtnetlink: %w", err)
		}
		defer h.Delete()
		for _, f := range allFamilies {
			filtered, err := b.removeFamily(ctx, f)
			if err != nil {
				return err
			}
			routed, err := removeRouting(h, cfg, f)
			if err != nil {
				return err
			}
			if routed || filtered {
				log.Debug("capture removed", "netns", pod.NetNS, "family", f, "routing", routed, "rules", filtered)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("removing capture in netns %s: %w", pod.NetNS, err)
	}
	return nil
}

func nlFamily(f Family) int {
	if f == IPv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// desiredRule is "fwmark ReplyMark/MarkMask lookup RouteTable".
func desiredRule(cfg Config, f Family) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = nlFamily(f)
	r.Priority = cfg.RulePriority
	r.Table = cfg.RouteTable
	r.Mark = cfg.ReplyMark
	mask := cfg.MarkMask
	r.Mask = &mask
	return r
}

func isDesiredRule(cfg Config, r netlink.Rule) bool {
	return r.Priority == cfg.RulePriority && r.Table == cfg.RouteTable &&
		r.Mark == cfg.ReplyMark && r.Mask != nil && *r.Mask == cfg.MarkMask &&
		!r.Invert && r.Src == nil && r.Dst == nil && r.IifName == "" && r.OifName == "" &&
		r.Goto <= 0
}

// desiredRoute is "local default dev lo table RouteTable": every packet that
// the fwmark rule sends here is delivered locally, which is what lets the
// agent's transparent (IP_TRANSPARENT) sockets receive the pod's replies
// addressed to a peer's IP.
func desiredRoute(cfg Config, f Family, lo int) *netlink.Route {
	bits := 32
	ip := net.IPv4zero
	if f == IPv6 {
		bits, ip = 128, net.IPv6zero
	}
	return &netlink.Route{
		Family:    nlFamily(f),
		LinkIndex: lo,
		Dst:       &net.IPNet{IP: ip, Mask: net.CIDRMask(0, bits)},
		Table:     cfg.RouteTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
	}
}

func isDesiredRoute(cfg Config, r netlink.Route, lo int) bool {
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones != 0 {
			return false
		}
	}
	return r.Table == cfg.RouteTable && r.Type == unix.RTN_LOCAL && r.LinkIndex == lo && r.Gw == nil
}

// tableRules lists the policy rules of family f that point at Warren's
// table. The table belongs to Warren, so all of them are Warren's.
func tableRules(h *netlink.Handle, cfg Config, f Family) ([]netlink.Rule, error) {
	rules, err := h.RuleListFiltered(nlFamily(f), &netlink.Rule{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			// IPv6 disabled in the kernel: nothing can be there.
			return nil, nil
		}
		return nil, fmt.Errorf("listing %s policy rules: %w", f, err)
	}
	return rules, nil
}

func tableRoutes(h *netlink.Handle, cfg Config, f Family) ([]netlink.Route, error) {
	routes, err := h.RouteListFiltered(nlFamily(f), &netlink.Route{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, nil
		}
		return nil, fmt.Errorf("listing %s routes in table %d: %w", f, cfg.RouteTable, err)
	}
	return routes, nil
}

// applyRouting makes table RouteTable hold exactly the local default route
// and the policy rules exactly the fwmark rule, for family f. Stale or
// duplicate entries (e.g. from an older config) are deleted.
func applyRouting(h *netlink.Handle, cfg Config, f Family) (bool, error) {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return false, fmt.Errorf("finding loopback: %w", err)
	}
	loIdx := lo.Attrs().Index
	changed := false

	routes, err := tableRoutes(h, cfg, f)
	if err != nil {
		return false, err
	}
	haveRoute := false
	for _, r := range routes {
		if !haveRoute && isDesiredRoute(cfg, r, loIdx) {
			haveRoute = true
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return false, fmt.Errorf("deleting stale %s route %v: %w", f, r, err)
		}
		changed = true
	}
	if !haveRoute {
		if err := h.RouteReplace(desiredRoute(cfg, f, loIdx)); err != nil {
			return false, fmt.Errorf("adding %s local route to table %d: %w", f, cfg.RouteTable, err)
		}
		changed = true
	}

	rules, err := tableRules(h, cfg, f)
	if err != nil {
		return false, err
	}
	haveRule := false
	for _, r := range rules {
		if !haveRule && isDesiredRule(cfg, r) {
			haveRule = true
			continue
		}
		if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("deleting stale %s policy rule %v: %w", f, r, err)
		}
		changed = true
	}
	if !haveRule {
		if err := h.RuleAdd(desiredRule(cfg, f)); err != nil {
			return false, fmt.Errorf("adding %s policy rule for mark %#x: %w", f, cfg.ReplyMark, err)
		}
		changed = true
	}
	return changed, nil
}

// removeRouting deletes the fwmark rule(s) and then every route of family f
// in table RouteTable.
func removeRouting(h *netlink.Handle, cfg Config, f Family) (bool, error) {
	changed := false
	rules, err := tableRules(h, cfg, f)
	if err != nil {
		return false, err
	}
	for _, r := range rules {
		if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("deleting %s policy rule %v: %w", f, r, err)
		}
		changed = true
	}
	routes, err := tableRoutes(h, cfg, f)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return false, fmt.Errorf("deleting %s route %v: %w", f, r, err)
		}
		changed = true
	}
	return changed, nil
}
