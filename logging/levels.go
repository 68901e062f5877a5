package logging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// ComponentKey is the attribute that names a logger's component, as set by
// logger.With("component", name).
const ComponentKey = "component"

// LevelOff disables a logger: no record has a level this high.
const LevelOff = slog.Level(math.MaxInt32)

// ErrInvalidSpec is returned by Set for a malformed level spec; the
// wrapping error names the offending clause.
var ErrInvalidSpec = errors.New("invalid log level spec")

// Levels holds the default level and per-component overrides. Loggers derived
// from Handler read their level with one atomic load per record; Set and
// Reset take effect on existing loggers immediately. Safe for concurrent use.
type Levels struct {
	base slog.Handler
	def  slog.LevelVar // current default

	// vars maps a component to the LevelVar its handlers read. The map is
	// immutable once stored: a new component copies it, so the lookup done
	// when a logger is derived needs no lock.
	vars atomic.Pointer[map[string]*slog.LevelVar]

	mu        sync.Mutex // serializes changes
	overrides map[string]slog.Level
	start     spec // what Reset restores
}

// spec is a parsed level spec: an optional default and per-component levels.
type spec struct {
	def        *slog.Level
	components map[string]slog.Level
}

// New returns Levels that pass records to base. Base should let every level
// through (slog.HandlerOptions{Level: slog.LevelDebug}) since filtering
// happens here. def is the default level and what Reset goes back to.
func New(base slog.Handler, def slog.Level) *Levels {
	l := &Levels{base: base, overrides: map[string]slog.Level{}}
	l.def.Set(def)
	l.start = spec{def: &def}
	l.vars.Store(&map[string]*slog.LevelVar{})
	return l
}

// Init applies spec like Set and makes the result the start levels that
// Reset returns to (for a level given on the command line).
func (l *Levels) Init(s string) error {
	sp, err := parse(s)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.apply(sp)
	d := l.def.Level()
	l.start = spec{def: &d, components: maps.Clone(l.overrides)}
	return nil
}

// Set changes levels. spec is a comma-separated list of clauses, each either
// a level, which sets the default and clears every component override, or
// component:level (or component=level). Levels are trace (same as debug),
// debug, info, warn (or warning), error and off. A bare level applies before
// the component clauses whatever their order, so "debug,proxy:warn" and
// "proxy:warn,debug" mean the same. Nothing changes if any clause is invalid.
func (l *Levels) Set(s string) error {
	sp, err := parse(s)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.apply(sp)
	return nil
}

// Reset restores the levels given to New (or Init).
func (l *Levels) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.overrides)
	l.apply(l.start)
}

// apply installs sp on top of the current levels. l.mu must be held.
func (l *Levels) apply(sp spec) {
	if sp.def != nil {
		l.def.Set(*sp.def)
		clear(l.overrides)
	}
	maps.Copy(l.overrides, sp.components)
	for name := range sp.components {
		l.varForLocked(name)
	}
	for name, v := range *l.vars.Load() {
		if lvl, ok := l.overrides[name]; ok {
			v.Set(lvl)
		} else {
			v.Set(l.def.Level())
		}
	}
}

// varForLocked returns component name's LevelVar, creating it at the
// component's current level. l.mu must be held.
func (l *Levels) varForLocked(name string) *slog.LevelVar {
	old := *l.vars.Load()
	if v, ok := old[name]; ok {
		return v
	}
	v := new(slog.LevelVar)
	if lvl, ok := l.overrides[name]; ok {
		v.Set(lvl)
	} else {
		v.Set(l.def.Level())
	}
	next := make(map[string]*slog.LevelVar, len(old)+1)
	maps.Copy(next, old)
	next[name] = v
	l.vars.Store(&next)
	return v
}

// String lists the current levels: the default first, then each component
// with its own level, e.g. "default:info hbone:debug proxy:warn".
func (l *Levels) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	b.WriteString("default:" + levelName(l.def.Level()))
	for _, name := range slices.Sorted(maps.Keys(l.overrides)) {
		b.WriteString(" " + name + ":" + levelName(l.overrides[name]))
	}
	return b.String()
}

// Handler returns the slog.Handler to build loggers on. A logger derived with
// .With("component", X) is filtered at X's level, any other at the default.
// A "component" attribute given on a single record, or inside a group, does
// not select a level: the level is checked before the record's attributes
// are known.
func (l *Levels) Handler() slog.Handler {
	return &handler{l: l, next: l.base, lv: &l.def}
}

type handler struct {
	l       *Levels
	next    slog.Handler
	lv      *slog.LevelVar
	grouped bool // attributes added from now on are inside a group
}

func (h *handler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= h.lv.Level() && h.next.Enabled(ctx, level)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	return h.next.Handle(ctx, r)
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := &handler{l: h.l, next: h.next.WithAttrs(attrs), lv: h.lv, grouped: h.grouped}
	if !h.grouped {
		for _, a := range attrs {
			if a.Key == ComponentKey {
				out.lv = h.l.component(a.Value.Resolve().String())
			}
		}
	}
	return out
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &handler{l: h.l, next: h.next.WithGroup(name), lv: h.lv, grouped: true}
}

// component returns the LevelVar for a handler of component name. It locks
// only the first time a component is seen.
func (l *Levels) component(name string) *slog.LevelVar {
	if v, ok := (*l.vars.Load())[name]; ok {
		return v
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.varForLocked(name)
}

// parse reads a level spec; see Set.
func parse(s string) (spec, error) {
	sp := spec{components: map[string]slog.Level{}}
	if strings.TrimSpace(s) == "" {
		return sp, fmt.Errorf("%w: empty", ErrInvalidSpec)
	}
	for clause := range strings.SplitSeq(s, ",") {
		clause = strings.TrimSpace(clause)
		name, lvlText, scoped := strings.Cut(clause, ":")
		if !scoped {
			name, lvlText, scoped = strings.Cut(clause, "=")
		}
		if !scoped {
			lvl, err := ParseLevel(clause)
			if err != nil {
				return spec{}, fmt.Errorf("%w: clause %q: %w", ErrInvalidSpec, clause, err)
			}
			sp.def = &lvl
			continue
		}
		name = strings.TrimSpace(name)
		if name == "" || strings.ContainsAny(name, " \t:=") {
			return spec{}, fmt.Errorf("%w: clause %q: bad component name %q", ErrInvalidSpec, clause, name)
		}
		lvl, err := ParseLevel(strings.TrimSpace(lvlText))
		if err != nil {
			return spec{}, fmt.Errorf("%w: clause %q: %w", ErrInvalidSpec, clause, err)
		}
		sp.components[name] = lvl
	}
	return sp, nil
}

// ParseLevel reads one level name, case-insensitively. slog has no trace
// level, so trace means debug.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	case "off":
		return LevelOff, nil
	}
	return 0, fmt.Errorf("unknown level %q (want trace, debug, info, warn, error or off)", s)
}

func levelName(l slog.Level) string {
	if l == LevelOff {
		return "off"
	}
	return strings.ToLower(l.String())
}

// Validate reports whether spec is acceptable to Set, without changing
// anything.
func Validate(spec string) error {
	_, err := parse(spec)
	return err
}
