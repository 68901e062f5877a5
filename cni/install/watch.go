package install

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/warren-mesh/warren/cni"
)

// watchDebounce: primary plugins write their file in several steps (some
// truncate and write in place), and a burst of events should cost one
// Install. A read in the middle of a write fails to parse and leaves the
// file alone; the next event brings a complete file.
const watchDebounce = 200 * time.Millisecond

// Watch runs Install, then runs it again whenever the configuration
// directory or the plugin binary changes (the primary plugin rewriting its
// file without warren-cni, a new file sorting first, the binary deleted),
// until ctx ends; then it returns nil. It creates ConfDir and BinDir if
// missing so that it can watch them. Install errors are logged, once per
// distinct error, and retried on the next change: ErrNoConfig is the normal
// state of a node whose primary plugin has not started yet. Watch does not
// uninstall on return.
func Watch(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("cni install config: %w", err)
	}
	log = log.With("component", "cni-install")
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching CNI directories: %w", err)
	}
	defer w.Close()
	for _, dir := range []string{cfg.ConfDir, cfg.BinDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watching %s: %w", dir, err)
		}
	}

	var lastErr string
	install := func() {
		changed, err := Install(cfg)
		switch {
		case err != nil:
			if err.Error() != lastErr {
				level := slog.LevelError
				if errors.Is(err, ErrNoConfig) {
					level = slog.LevelInfo
				}
				log.Log(ctx, level, "cannot chain warren-cni yet; retrying on the next change", "error", err)
			}
			lastErr = err.Error()
			return
		case changed:
			log.Info("warren-cni chained into the CNI configuration", "dir", cfg.ConfDir, "bin", cfg.binPath())
		}
		lastErr = ""
	}
	install()

	// A stopped timer stands for "nothing pending"; each relevant event
	// (re)arms it.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("CNI directory watch closed")
			}
			if relevant(cfg, ev) {
				timer.Reset(watchDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("CNI directory watch closed")
			}
			// An overflow means lost events: check again.
			log.Warn("CNI directory watch error; checking again", "error", err)
			timer.Reset(watchDebounce)
		case <-timer.C:
			install()
		}
	}
}

// relevant reports whether ev may undo the chain: a change to a
// configuration file, or to the plugin binary. Warren's own temp and backup
// files are not.
func relevant(cfg Config, ev fsnotify.Event) bool {
	dir, name := filepath.Dir(ev.Name), filepath.Base(ev.Name)
	if filepath.Clean(dir) == filepath.Clean(cfg.BinDir) && name == cni.PluginType {
		return true
	}
	if filepath.Clean(dir) != filepath.Clean(cfg.ConfDir) || strings.HasPrefix(name, backupPrefix) {
		return false
	}
	for _, ext := range configExts {
		if filepath.Ext(name) == ext {
			return true
		}
	}
	return false
}
