package install

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/warren-mesh/warren/cni"
)

var (
	// ErrNoConfig: the configuration directory holds no network
	// configuration yet; the primary CNI plugin writes one when it starts.
	ErrNoConfig = errors.New("no CNI network configuration")
	// ErrInvalidConfig: the primary configuration cannot be read or chained
	// into; it is left untouched.
	ErrInvalidConfig = errors.New("invalid CNI network configuration")
)

// Names Warren uses in the configuration directory. They start with a dot
// and end in neither .conf, .conflist nor .json, so runtimes never load them.
const (
	backupPrefix = ".warren-cni."
	backupSuffix = ".orig"
	tmpPattern   = ".warren-cni-tmp-*"
)

// configExts are the extensions containerd and CRI-O (through libcni) load
// network configurations from.
var configExts = []string{".conf", ".conflist", ".json"}

// Config says where the node's CNI files are and what warren-cni's entry
// holds. Paths are as this process sees them (a DaemonSet mounts the host's
// directories); AgentSocket and LogFile are as the plugin, on the host,
// sees them.
type Config struct {
	// ConfDir is the runtime's network configuration directory.
	ConfDir string
	// BinDir is where the runtime looks for plugin binaries.
	BinDir string
	// PluginSource is the warren-cni binary to copy into BinDir.
	PluginSource string
	// AgentSocket and LogFile go into the plugin's entry.
	AgentSocket string
	LogFile     string
}

// DefaultConfig returns the standard paths of containerd and CRI-O;
// PluginSource must still be set.
func DefaultConfig() Config {
	return Config{
		ConfDir:     "/etc/cni/net.d",
		BinDir:      "/opt/cni/bin",
		AgentSocket: cni.DefaultSocket,
		LogFile:     cni.DefaultLogFile,
	}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	for _, p := range []struct{ name, v string }{
		{"cni conf dir", c.ConfDir}, {"cni bin dir", c.BinDir}, {"cni plugin source", c.PluginSource},
		{"cni agent socket", c.AgentSocket}, {"cni log file", c.LogFile},
	} {
		if !filepath.IsAbs(p.v) {
			errs = append(errs, fmt.Errorf("%s: %q must be an absolute path", p.name, p.v))
		}
	}
	return errors.Join(errs...)
}

func (c Config) entry() entry {
	return entry{Type: cni.PluginType, AgentSocket: c.AgentSocket, LogFile: c.LogFile}
}

func (c Config) binPath() string { return filepath.Join(c.BinDir, cni.PluginType) }

func backupName(name string) string { return backupPrefix + name + backupSuffix }

// Install makes the node's primary network configuration run warren-cni
// last. Side effects, in order, each skipped when already so: copies
// PluginSource to BinDir/warren-cni (atomically, 0755), before the
// configuration names it; saves the primary file's bytes to
// ConfDir/.warren-cni.<name>.orig when they do not chain warren-cni yet
// (they are the primary plugin's own, and what Uninstall restores); writes
// the chained file atomically with the original's mode; when a single-plugin
// .conf or .json was converted, removes it (its .conflist now sorts in its
// place). Running it again changes nothing. Errors leave the configuration
// as it was (at worst with the binary updated); Install may be retried.
// ErrNoConfig and ErrInvalidConfig are returned wrapped.
func Install(cfg Config) (changed bool, err error) {
	if err := cfg.Validate(); err != nil {
		return false, fmt.Errorf("cni install config: %w", err)
	}
	binChanged, err := installBinary(cfg)
	if err != nil {
		return false, err
	}
	name, err := primary(cfg.ConfDir)
	if err != nil {
		return binChanged, err
	}
	path := filepath.Join(cfg.ConfDir, name)
	data, err := os.ReadFile(path)
	if err != nil {
		return binChanged, fmt.Errorf("reading CNI configuration: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return binChanged, fmt.Errorf("reading CNI configuration: %w", err)
	}
	p, confChanged, err := planChain(name, data, cfg.entry())
	if err != nil || !confChanged {
		return binChanged, err
	}
	if p.name != name {
		if err := checkConvertTarget(cfg.ConfDir, name, p.name); err != nil {
			return binChanged, err
		}
	}
	if p.original {
		if err := writeAtomic(cfg.ConfDir, backupName(name), data, 0o600); err != nil {
			return binChanged, fmt.Errorf("saving original CNI configuration: %w", err)
		}
	}
	if err := writeAtomic(cfg.ConfDir, p.name, p.data, fi.Mode().Perm()); err != nil {
		return binChanged, fmt.Errorf("writing chained CNI configuration: %w", err)
	}
	if p.name != name {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return true, fmt.Errorf("removing converted CNI configuration %s: %w", name, err)
		}
	}
	return true, nil
}

// Uninstall takes warren-cni out of every network configuration in
// ConfDir, then removes the backups and the binary. Per file holding a
// warren-cni entry: if the file is exactly what Install made of the saved
// original (compared as JSON, with the entry taken out), the original bytes
// are restored under the original name (and a converted .conflist removed);
// if someone else has rewritten it since, only the entry is taken out, and
// their other changes stay. Idempotent; may be retried after an error.
func Uninstall(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("cni install config: %w", err)
	}
	names, err := configFiles(cfg.ConfDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		errs = append(errs, unchainFile(cfg.ConfDir, name))
	}
	if err := errors.Join(errs...); err != nil {
		// Keep the backups: a retry still needs them.
		return err
	}
	entries, err := os.ReadDir(cfg.ConfDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("listing %s: %w", cfg.ConfDir, err)
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, backupPrefix) && strings.HasSuffix(n, backupSuffix) {
			errs = append(errs, removeIfExists(filepath.Join(cfg.ConfDir, n)))
		}
	}
	errs = append(errs, removeIfExists(cfg.binPath()))
	return errors.Join(errs...)
}

// unchainFile takes warren-cni out of one configuration file.
func unchainFile(dir, name string) error {
	path := filepath.Join(dir, name)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading CNI configuration: %w", err)
	}
	stripped, found := planUnchain(name, data)
	if !found {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("reading CNI configuration: %w", err)
	}
	if orig, origName, ok := findOriginal(dir, name, stripped); ok {
		if origName != name {
			if _, err := os.Stat(filepath.Join(dir, origName)); err == nil {
				// The primary plugin has written its single-plugin file
				// again since the conversion: that is the current
				// original, and it sorts before our list, which is
				// therefore unused.
				return removeIfExists(path)
			}
		}
		if err := writeAtomic(dir, origName, orig, fi.Mode().Perm()); err != nil {
			return fmt.Errorf("restoring original CNI configuration %s: %w", origName, err)
		}
		if origName != name {
			return removeIfExists(path)
		}
		return nil
	}
	if err := writeAtomic(dir, name, stripped, fi.Mode().Perm()); err != nil {
		return fmt.Errorf("removing warren-cni from %s: %w", name, err)
	}
	return nil
}

// findOriginal looks for the saved original that file name (with Warren's
// entry taken out: stripped) was made from: its own backup, or for a
// .conflist the backup of the .conf or .json it was converted from. It is
// returned only when it still matches, that is when nobody but Install has
// changed the file since.
func findOriginal(dir, name string, stripped []byte) (orig []byte, origName string, ok bool) {
	candidates := []string{name}
	if filepath.Ext(name) == ".conflist" {
		base := strings.TrimSuffix(name, ".conflist")
		candidates = append(candidates, base+".conf", base+".json")
	}
	for _, c := range candidates {
		b, err := os.ReadFile(filepath.Join(dir, backupName(c)))
		if err != nil {
			continue
		}
		list, converted, err := asList(c, b)
		if err != nil || (c != name) != converted {
			continue
		}
		if sameJSON(list.encode(), stripped) {
			return b, c, true
		}
	}
	return nil, "", false
}

// checkConvertTarget refuses to convert name into target when target is
// someone else's file: it sorts after name, so no runtime uses it, but it
// would be lost. A target holding a warren-cni entry is an earlier
// conversion of ours, which the primary plugin has since undone by writing
// name again.
func checkConvertTarget(dir, name, target string) error {
	data, err := os.ReadFile(filepath.Join(dir, target))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading CNI configuration: %w", err)
	}
	if _, ours := planUnchain(target, data); ours {
		return nil
	}
	return fmt.Errorf("%w: %s is a single plugin and must become %s to chain warren-cni, but %s exists and is not Warren's", ErrInvalidConfig, name, target, target)
}

// primary is the file a runtime uses: the lexicographically first
// configuration file in dir, as containerd and CRI-O pick it.
func primary(dir string) (string, error) {
	names, err := configFiles(dir)
	if err != nil {
		return "", err
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%w in %s (files ending in %s); the primary CNI plugin has not written one yet", ErrNoConfig, dir, strings.Join(configExts, ", "))
	}
	return names[0], nil
}

// configFiles lists the configuration files in dir, sorted by name.
func configFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing CNI configuration dir %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		for _, ext := range configExts {
			if filepath.Ext(e.Name()) == ext {
				names = append(names, e.Name())
			}
		}
	}
	return names, nil // ReadDir sorts by name
}

// installBinary copies the plugin into BinDir unless the same bytes are
// there already. The copy is renamed into place, so a runtime never runs a
// half-written binary, and running copies keep their old file.
func installBinary(cfg Config) (changed bool, err error) {
	src, err := os.ReadFile(cfg.PluginSource)
	if err != nil {
		return false, fmt.Errorf("reading warren-cni binary: %w", err)
	}
	dst := cfg.binPath()
	if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, src) {
		if fi, err := os.Stat(dst); err == nil && fi.Mode().Perm() == 0o755 {
			return false, nil
		}
	}
	if err := os.MkdirAll(cfg.BinDir, 0o755); err != nil {
		return false, fmt.Errorf("creating CNI bin dir: %w", err)
	}
	if err := writeAtomic(cfg.BinDir, cni.PluginType, src, 0o755); err != nil {
		return false, fmt.Errorf("installing warren-cni binary: %w", err)
	}
	return true, nil
}

// writeAtomic replaces dir/name with data: a temp file in the same dir,
// given mode, synced, then renamed over the target.
func writeAtomic(dir, name string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(dir, tmpPattern)
	if err != nil {
		return err
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}
