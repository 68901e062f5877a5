package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/warren-mesh/warren/state"
)

// FileConfig configures the local config file source.
type FileConfig struct {
	// Path of the YAML file (format: testdata/example.yaml). It may be a
	// symlink, as in a mounted Kubernetes ConfigMap.
	Path string
	// Debounce is how long the file must stay quiet after a change before it
	// is re-read, so that an editor's or kubelet's several writes for one
	// save are read once, complete. 0 re-reads on every event.
	Debounce time.Duration
}

// DefaultFileConfig has no Path; the caller must set one.
func DefaultFileConfig() FileConfig {
	// 100ms covers an editor's write-rename-chmod burst and kubelet's
	// ConfigMap swap, yet is far below anything a human would notice.
	return FileConfig{Debounce: 100 * time.Millisecond}
}

// maxDebounce bounds Debounce: longer only delays updates, and a value in
// this range is more likely a unit mistake (100 instead of 100ms is 100ns,
// 100s is a typo).
const maxDebounce = time.Minute

// Validate checks the config.
func (c FileConfig) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path: required"))
	}
	if c.Debounce < 0 || c.Debounce > maxDebounce {
		errs = append(errs, fmt.Errorf("debounce: %s is not in 0-%s", c.Debounce, maxDebounce))
	}
	return errors.Join(errs...)
}

// File keeps a state.Store in step with a local config file: it swaps in a
// new Snapshot whenever the file's content changes and parses, and keeps the
// last good one when it does not parse.
type File struct {
	cfg   FileConfig
	store *state.Store
	log   *slog.Logger

	// Touched only by Start (before the watch loop runs) and the loop.
	watcher   *fsnotify.Watcher
	extraDir  string // directory of the symlink target, when watched too
	goodHash  string // version of the content in the store
	badHash   string // version of the last rejected content
	stopWatch context.CancelFunc
	done      chan struct{}

	startOnce sync.Once
	stopOnce  sync.Once

	ready   atomic.Bool
	applied atomic.Uint64
	// report, when set, is told about every applied or rejected version.
	report func(ok bool)
	errors atomic.Uint64
	// checks counts debounced re-reads, so tests can tell that one happened
	// even when it changed nothing.
	checks atomic.Uint64

	mu      sync.Mutex
	lastErr error
}

// NewFile returns a source for cfg.Path feeding store. It does no I/O; call
// Start. A nil log discards.
func NewFile(cfg FileConfig, store *state.Store, log *slog.Logger) *File {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &File{
		cfg:   cfg,
		store: store,
		log:   log.With("component", "discovery.file", "path", cfg.Path),
		done:  make(chan struct{}),
	}
}

// Start, in order: validates the config; watches the file's directory (first,
// so that no change after the first read is missed); reads and parses the
// file and swaps it into the store; then, until ctx ends or Stop, re-reads
// the file after each change (debounced) and swaps in each new good version.
//
// Watching the directory rather than the file is what makes an editor's
// rename-over-replace and a ConfigMap's "..data" symlink swap visible: both
// replace the inode a file watch would be on.
//
// An error means the agent has no state: the file is missing or bad, or the
// watch failed. Nothing is left running; Start may be retried on a new File.
// Start may be called once.
func (f *File) Start(ctx context.Context) error {
	started := false
	f.startOnce.Do(func() { started = true })
	if !started {
		return errors.New("config file source: already started or stopped")
	}
	if err := f.cfg.Validate(); err != nil {
		return fmt.Errorf("config file source: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching config file: %w", err)
	}
	if err := w.Add(filepath.Dir(f.cfg.Path)); err != nil {
		w.Close()
		return fmt.Errorf("watching config file directory: %w", err)
	}
	f.watcher = w
	if err := f.reload(); err != nil {
		w.Close()
		return fmt.Errorf("loading config file: %w", err)
	}
	ctx, f.stopWatch = context.WithCancel(ctx)
	go f.loop(ctx)
	return nil
}

// Stop ends the watch and waits for it to finish. The store keeps the last
// good state. Safe to call more than once, and without a successful Start,
// but not concurrently with Start.
func (f *File) Stop() {
	f.stopOnce.Do(func() {
		// Starting now would race with stopping; make it fail instead.
		f.startOnce.Do(func() {})
		if f.stopWatch == nil {
			return
		}
		f.stopWatch()
		<-f.done
	})
}

// Ready reports whether a good state from the file is in the store. It stays
// true when a later version of the file is rejected.
func (f *File) Ready() bool { return f.ready.Load() }

// LastError is the error of the latest read of the file, nil when that read
// was good (or returned to the content in the store).
func (f *File) LastError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr
}

// Report registers fn to be told about every version applied (true) or
// rejected (false), for metrics. Call it before Start.
func (f *File) Report(fn func(ok bool)) { f.report = fn }

func (f *File) reported(ok bool) {
	if f.report != nil {
		f.report(ok)
	}
}

// Applied counts the snapshots swapped into the store, the first included.
func (f *File) Applied() uint64 { return f.applied.Load() }

// Errors counts rejected versions of the file (each distinct content once)
// and failed reads.
func (f *File) Errors() uint64 { return f.errors.Load() }

func (f *File) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastErr = err
}

func (f *File) loop(ctx context.Context) {
	defer close(f.done)
	defer f.watcher.Close()
	// A stopped timer stands for "nothing pending"; each relevant event
	// (re)arms it, so the re-read happens once the burst is over.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-f.watcher.Events:
			if !ok {
				return
			}
			if f.relevant(ev) {
				timer.Reset(f.cfg.Debounce)
			}
		case err, ok := <-f.watcher.Errors:
			if !ok {
				return
			}
			// An overflow means events were lost, so re-read to be sure.
			f.log.Warn("config file watch error; re-reading", "err", err)
			timer.Reset(f.cfg.Debounce)
		case <-timer.C:
			if err := f.reload(); err != nil {
				f.log.Error("config file rejected; keeping the last good state", "kept_version", f.goodHash, "err", err)
			}
			f.checks.Add(1)
		}
	}
}

// relevant reports whether ev may have changed what Path reads. Names, not
// directories, are compared: an event in either watched directory for the
// file's name or its symlink target's name counts, and so does any ".."
// entry, which is how Kubernetes' atomic writer names its "..data" link and
// timestamped directories.
func (f *File) relevant(ev fsnotify.Event) bool {
	name := filepath.Base(ev.Name)
	if name == filepath.Base(f.cfg.Path) || strings.HasPrefix(name, "..") {
		return true
	}
	return f.extraDir != "" && filepath.Dir(ev.Name) == f.extraDir
}

// reload reads and parses the file and, when it is good and new, swaps it
// into the store. It returns the error only when the content is newly bad,
// so that each bad version is logged and counted once.
func (f *File) reload() error {
	data, err := os.ReadFile(f.cfg.Path)
	if err != nil {
		// A missing file is often a moment in a non-atomic replace; the
		// create that ends it triggers another read.
		f.errors.Add(1)
		f.reported(false)
		f.setErr(err)
		return err
	}
	f.followSymlink()
	v := Version(data)
	switch v {
	case f.goodHash:
		f.setErr(nil)
		return nil
	case f.badHash:
		return nil
	}
	snap, warnings, err := ParseWithWarnings(data)
	if err != nil {
		err = fmt.Errorf("version %s: %w", v, err)
		f.badHash = v
		f.errors.Add(1)
		f.reported(false)
		f.setErr(err)
		return err
	}
	f.store.Swap(snap)
	f.goodHash, f.badHash = v, ""
	f.applied.Add(1)
	f.reported(true)
	f.setErr(nil)
	f.ready.Store(true)
	// Once per applied version, like the rest of this function's logs: the
	// policy is in force, but not as its author wrote it.
	for _, w := range warnings {
		f.log.Warn("config file policy not enforced as written", "version", v, "warning", w)
	}
	f.log.Info("config file applied", "version", v,
		"workloads", len(snap.Workloads()), "services", len(snap.Services()),
		"policies", len(snap.Policies()))
	return nil
}

// followSymlink also watches the directory of Path's symlink target when it
// lies elsewhere, so that editing the target in place is seen too. Failures
// only cost that extra visibility, so they are logged, not returned.
func (f *File) followSymlink() {
	target, err := filepath.EvalSymlinks(f.cfg.Path)
	if err != nil {
		return
	}
	dir := filepath.Dir(target)
	if dir == f.extraDir {
		return
	}
	if self, err := filepath.EvalSymlinks(filepath.Dir(f.cfg.Path)); err == nil && self == dir {
		dir = "" // the target is beside the link: already watched
	}
	if f.extraDir != "" {
		// The old target directory may be gone already (ConfigMap swap).
		_ = f.watcher.Remove(f.extraDir)
	}
	f.extraDir = ""
	if dir == "" {
		return
	}
	if err := f.watcher.Add(dir); err != nil {
		f.log.Warn("cannot watch the config file's symlink target directory; edits there are not seen", "dir", dir, "err", err)
		return
	}
	f.extraDir = dir
}
