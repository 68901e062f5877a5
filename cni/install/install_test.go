package install

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/cni"
)

var update = flag.Bool("update", false, "rewrite testdata/*/want from the current output")

// primaryMode is given to every input file, so the tests see that rewritten
// files keep their mode (0640 is not what a fresh file gets).
const primaryMode = 0o640

// readDir maps each file name in dir to its content.
func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

func writeDir(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), primaryMode); err != nil {
			t.Fatal(err)
		}
		// WriteFile's mode is filtered by the umask.
		os.Chmod(filepath.Join(dir, name), primaryMode)
	}
}

// setup copies testdata/<name>/in into a fresh ConfDir and returns a Config
// with a fake plugin binary.
func setup(t *testing.T, name string) Config {
	t.Helper()
	root := t.TempDir()
	cfg := Config{
		ConfDir:      filepath.Join(root, "net.d"),
		BinDir:       filepath.Join(root, "bin"),
		PluginSource: filepath.Join(root, "src", "warren-cni"),
		AgentSocket:  cni.DefaultSocket,
		LogFile:      cni.DefaultLogFile,
	}
	writeDir(t, cfg.ConfDir, readDir(t, filepath.Join("testdata", name, "in")))
	os.MkdirAll(filepath.Dir(cfg.PluginSource), 0o755)
	if err := os.WriteFile(cfg.PluginSource, []byte("\x7fELF fake warren-cni v1"), 0o700); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func checkModes(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		fi, _ := e.Info()
		if strings.HasPrefix(e.Name(), backupPrefix) {
			continue
		}
		if fi.Mode().Perm() != primaryMode {
			t.Errorf("%s has mode %v, want %v", e.Name(), fi.Mode().Perm(), fs.FileMode(primaryMode))
		}
	}
}

// TestInstallGolden: Install turns testdata/<case>/in into .../want (run
// with -update to regenerate, then read the diff); a second Install
// changes nothing; the result loads in libcni with warren-cni last;
// Uninstall restores the input byte for byte.
func TestInstallGolden(t *testing.T) {
	tests := []struct {
		name    string
		primary string // the file the runtime uses after Install
	}{
		{"bridge-portmap", "10-bridge.conflist"},
		{"flannel", "10-flannel.conflist"},
		{"single-conf", "10-bridge.conflist"},
		{"single-json", "20-ptp.conflist"},
		{"several", "05-calico.conflist"},
		{"chained-old-socket", "10-bridge.conflist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := setup(t, tt.name)
			in := readDir(t, cfg.ConfDir)

			changed, err := Install(cfg)
			if err != nil {
				t.Fatalf("Install: %v", err)
			}
			if !changed {
				t.Fatal("first Install reported no change")
			}
			got := readDir(t, cfg.ConfDir)
			wantDir := filepath.Join("testdata", tt.name, "want")
			if *update {
				os.RemoveAll(wantDir)
				writeDir(t, wantDir, got)
			}
			if diff := cmp.Diff(readDir(t, wantDir), got); diff != "" {
				t.Errorf("after Install (-want +got):\n%s", diff)
			}
			checkModes(t, cfg.ConfDir)
			bin, err := os.Stat(cfg.binPath())
			if err != nil || bin.Mode().Perm() != 0o755 {
				t.Errorf("plugin binary: %v, %v; want mode 0755", bin, err)
			}

			list, err := libcni.NetworkConfFromFile(filepath.Join(cfg.ConfDir, tt.primary))
			if err != nil {
				t.Fatalf("libcni cannot load the result: %v", err)
			}
			last := list.Plugins[len(list.Plugins)-1].Network
			if tt.name != "chained-old-socket" && last.Type != cni.PluginType {
				t.Errorf("last plugin is %q, want %q", last.Type, cni.PluginType)
			}

			binBefore, _ := os.Stat(cfg.binPath())
			changed, err = Install(cfg)
			if err != nil || changed {
				t.Fatalf("second Install = %v, %v; want no change", changed, err)
			}
			if diff := cmp.Diff(got, readDir(t, cfg.ConfDir)); diff != "" {
				t.Errorf("second Install changed files (-first +second):\n%s", diff)
			}
			if binAfter, _ := os.Stat(cfg.binPath()); !os.SameFile(binBefore, binAfter) {
				t.Error("second Install rewrote the binary")
			}

			for range 2 {
				if err := Uninstall(cfg); err != nil {
					t.Fatalf("Uninstall: %v", err)
				}
				want := in
				if tt.name == "chained-old-socket" {
					// Nothing to restore: the input had Warren's entry
					// already, so Uninstall takes it out.
					dir := filepath.Join("testdata", tt.name, "uninstalled")
					if *update {
						os.RemoveAll(dir)
						writeDir(t, dir, readDir(t, cfg.ConfDir))
					}
					want = readDir(t, dir)
				}
				if diff := cmp.Diff(want, readDir(t, cfg.ConfDir)); diff != "" {
					t.Errorf("after Uninstall (-want +got):\n%s", diff)
				}
				checkModes(t, cfg.ConfDir)
				if _, err := os.Stat(cfg.binPath()); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("binary still there after Uninstall: %v", err)
				}
			}
		})
	}
}

func TestInstallErrors(t *testing.T) {
	tests := []struct {
		name    string
		wantErr error
		wantMsg string
	}{
		{"empty", ErrNoConfig, "has not written one yet"},
		{"invalid-json", ErrInvalidConfig, "10-bridge.conflist"},
		{"old-version", ErrInvalidConfig, `cniVersion "0.2.0" cannot chain plugins`},
		{"no-plugins", ErrInvalidConfig, `"plugins" is empty`},
		{"convert-target-taken", ErrInvalidConfig, "10-bridge.conflist exists and is not Warren's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := setup(t, tt.name)
			in := readDir(t, cfg.ConfDir)
			_, err := Install(cfg)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Install = %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
			}
			if diff := cmp.Diff(in, readDir(t, cfg.ConfDir)); diff != "" {
				t.Errorf("a failed Install changed the configuration (-before +after):\n%s", diff)
			}
			checkModes(t, cfg.ConfDir)
		})
	}
	t.Run("no conf dir", func(t *testing.T) {
		cfg := setup(t, "empty")
		cfg.ConfDir = filepath.Join(cfg.ConfDir, "missing")
		if _, err := Install(cfg); !errors.Is(err, ErrNoConfig) {
			t.Fatalf("Install = %v, want ErrNoConfig", err)
		}
	})
	t.Run("invalid config", func(t *testing.T) {
		if _, err := Install(Config{ConfDir: "rel"}); err == nil || !strings.Contains(err.Error(), "absolute") {
			t.Fatalf("Install = %v, want a config error", err)
		}
	})
}

func TestInstallUpdatesBinary(t *testing.T) {
	cfg := setup(t, "bridge-portmap")
	if _, err := Install(cfg); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfg.PluginSource, []byte("\x7fELF fake warren-cni v2"), 0o700)
	changed, err := Install(cfg)
	if err != nil || !changed {
		t.Fatalf("Install after a new binary = %v, %v; want changed", changed, err)
	}
	if b, _ := os.ReadFile(cfg.binPath()); string(b) != "\x7fELF fake warren-cni v2" {
		t.Errorf("installed binary is %q", b)
	}
}

// rewrite replaces the plugins of the conflist at path, as another tool
// would, keeping Warren's entry where it is.
func rewrite(t *testing.T, path string, edit func([]map[string]any) []map[string]any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	var ps []map[string]any
	for _, p := range list["plugins"].([]any) {
		ps = append(ps, p.(map[string]any))
	}
	list["plugins"] = edit(ps)
	out, _ := json.MarshalIndent(list, "", "    ")
	if err := os.WriteFile(path, out, primaryMode); err != nil {
		t.Fatal(err)
	}
}

func pluginTypes(t *testing.T, path string) []string {
	t.Helper()
	list, err := libcni.NetworkConfFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range list.Plugins {
		out = append(out, p.Network.Type)
	}
	return out
}

// TestUninstallAfterExternalRewrite: someone else changed the chained file
// after Install; Uninstall takes out only Warren's entry and keeps their
// change.
func TestUninstallAfterExternalRewrite(t *testing.T) {
	for _, tc := range []struct{ name, file string }{
		{"bridge-portmap", "10-bridge.conflist"},
		{"single-conf", "10-bridge.conflist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := setup(t, tc.name)
			if _, err := Install(cfg); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(cfg.ConfDir, tc.file)
			rewrite(t, path, func(ps []map[string]any) []map[string]any {
				return append(ps[:len(ps)-1:len(ps)-1], map[string]any{"type": "tuning", "mtu": 1400}, ps[len(ps)-1])
			})
			if err := Uninstall(cfg); err != nil {
				t.Fatal(err)
			}
			got := pluginTypes(t, path)
			want := map[string][]string{
				"bridge-portmap": {"bridge", "portmap", "tuning"},
				"single-conf":    {"bridge", "tuning"},
			}[tc.name]
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("plugins after Uninstall (-want +got):\n%s", diff)
			}
			for name := range readDir(t, cfg.ConfDir) {
				if strings.HasPrefix(name, backupPrefix) || strings.HasSuffix(name, ".conf") && tc.name == "single-conf" {
					t.Errorf("%s left after Uninstall", name)
				}
			}
		})
	}
}

// TestPrimaryRewritesItsFile: the primary plugin writes its own file again
// (without Warren's entry); Install chains the new content, and Uninstall
// restores that new content, not the first original.
func TestPrimaryRewritesItsFile(t *testing.T) {
	for _, tc := range []struct{ name, file string }{
		{"bridge-portmap", "10-bridge.conflist"},
		{"single-conf", "10-bridge.conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := setup(t, tc.name)
			if _, err := Install(cfg); err != nil {
				t.Fatal(err)
			}
			orig := readDir(t, filepath.Join("testdata", tc.name, "in"))[tc.file]
			next := strings.Replace(orig, `"cni0"`, `"cni1"`, 1)
			if next == orig {
				t.Fatal("test input has no cni0 to change")
			}
			os.WriteFile(filepath.Join(cfg.ConfDir, tc.file), []byte(next), primaryMode)
			changed, err := Install(cfg)
			if err != nil || !changed {
				t.Fatalf("Install after the rewrite = %v, %v; want changed", changed, err)
			}
			after := readDir(t, cfg.ConfDir)
			primary := conflistName(tc.file)
			if !strings.Contains(after[primary], `"cni1"`) || !strings.Contains(after[primary], cni.PluginType) {
				t.Errorf("%s does not chain the new content:\n%s", primary, after[primary])
			}
			if err := Uninstall(cfg); err != nil {
				t.Fatal(err)
			}
			want := readDir(t, filepath.Join("testdata", tc.name, "in"))
			want[tc.file] = next
			if diff := cmp.Diff(want, readDir(t, cfg.ConfDir)); diff != "" {
				t.Errorf("after Uninstall (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWatch(t *testing.T) {
	cfg := setup(t, "empty")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch returned %v", err)
		}
	}()

	path := filepath.Join(cfg.ConfDir, "10-flannel.conflist")
	orig := readDir(t, filepath.Join("testdata", "flannel", "in"))["10-flannel.conflist"]
	chained := func() bool {
		b, err := os.ReadFile(path)
		return err == nil && strings.Contains(string(b), `"type": "warren-cni"`)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The primary plugin starts after the agent and writes its file.
	writeAtomic(cfg.ConfDir, "10-flannel.conflist", []byte(orig), primaryMode)
	waitFor("the new file is chained", chained)

	// It rewrites its file without Warren's entry (in place, as some do).
	os.WriteFile(path, []byte(orig), primaryMode)
	waitFor("the rewritten file is chained again", chained)

	// Someone removes the binary.
	os.Remove(cfg.binPath())
	waitFor("the binary is back", func() bool { _, err := os.Stat(cfg.binPath()); return err == nil })
}

// TestUninstallAfterPrimaryRewroteConf: the primary plugin wrote its .conf
// again after the conversion and Uninstall runs before Install could chain
// it: the new .conf is kept and the unused converted list removed.
func TestUninstallAfterPrimaryRewroteConf(t *testing.T) {
	cfg := setup(t, "single-conf")
	if _, err := Install(cfg); err != nil {
		t.Fatal(err)
	}
	in := readDir(t, filepath.Join("testdata", "single-conf", "in"))
	next := strings.Replace(in["10-bridge.conf"], `"cni0"`, `"cni1"`, 1)
	os.WriteFile(filepath.Join(cfg.ConfDir, "10-bridge.conf"), []byte(next), primaryMode)
	if err := Uninstall(cfg); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"10-bridge.conf": next}, readDir(t, cfg.ConfDir)); diff != "" {
		t.Errorf("after Uninstall (-want +got):\n%s", diff)
	}
}
