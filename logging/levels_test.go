package logging

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func newTest(def slog.Level) (*Levels, *bytes.Buffer) {
	var buf bytes.Buffer
	base := slog.NewTextHandler(&buf, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})
	return New(base, def), &buf
}

func TestSet(t *testing.T) {
	tests := []struct {
		name  string
		specs []string // applied in order
		want  string
	}{
		{"start", nil, "default:info"},
		{"default", []string{"debug"}, "default:debug"},
		{"trace is debug", []string{"trace"}, "default:debug"},
		{"colon and equals", []string{"hbone:debug,proxy=warn"}, "default:info hbone:debug proxy:warn"},
		{"warning", []string{"proxy:WARNING"}, "default:info proxy:warn"},
		{"off", []string{"off,agent:error"}, "default:off agent:error"},
		{"bare level clears overrides", []string{"hbone:debug", "warn"}, "default:warn"},
		{"bare level first whatever the order", []string{"proxy:error,debug"}, "default:debug proxy:error"},
		{"incremental", []string{"hbone:debug", "proxy:warn"}, "default:info hbone:debug proxy:warn"},
		{"spaces", []string{" hbone : debug , error "}, "default:error hbone:debug"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _ := newTest(slog.LevelInfo)
			for _, s := range tt.specs {
				if err := l.Set(s); err != nil {
					t.Fatalf("Set(%q): %v", s, err)
				}
			}
			if diff := cmp.Diff(tt.want, l.String()); diff != "" {
				t.Errorf("String() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetInvalid(t *testing.T) {
	tests := []struct {
		spec    string
		mention string
	}{
		{"", "empty"},
		{"verbose", `"verbose"`},
		{"hbone:debug,proxy:loud", `"loud"`},
		{":debug", `bad component name`},
		{"a b:debug", `bad component name`},
		{"proxy:", `unknown level ""`},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			l, _ := newTest(slog.LevelInfo)
			err := l.Set(tt.spec)
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Set(%q) = %v, want ErrInvalidSpec", tt.spec, err)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %s", err, tt.mention)
			}
			if got := l.String(); got != "default:info" {
				t.Errorf("a failed Set changed the levels to %q", got)
			}
		})
	}
}

func TestHandlerFilters(t *testing.T) {
	l, buf := newTest(slog.LevelInfo)
	root := slog.New(l.Handler())
	proxy := root.With(ComponentKey, "proxy")
	hbone := root.With("component", "hbone", "peer", "x")
	grouped := root.WithGroup("g").With(ComponentKey, "proxy") // not a component logger

	logAll := func() {
		buf.Reset()
		for _, lg := range []*slog.Logger{root, proxy, hbone, grouped} {
			lg.Debug("d")
			lg.Info("i")
			lg.Warn("w")
		}
	}
	count := func(msg string) int {
		return strings.Count(buf.String(), "msg="+msg+"\n") + strings.Count(buf.String(), "msg="+msg+" ")
	}

	steps := []struct {
		spec           string
		debug, info, w int
	}{
		{"", 0, 4, 4},
		{"proxy:debug", 1, 4, 4},
		{"hbone:warn,proxy:debug", 1, 3, 4},
		{"error", 0, 0, 0},
		{"debug", 4, 4, 4},
		{"off,hbone:info", 0, 1, 1},
	}
	for _, st := range steps {
		t.Run("spec="+st.spec, func(t *testing.T) {
			if st.spec != "" {
				if err := l.Set(st.spec); err != nil {
					t.Fatal(err)
				}
			}
			logAll()
			got := []int{count("d"), count("i"), count("w")}
			if diff := cmp.Diff([]int{st.debug, st.info, st.w}, got); diff != "" {
				t.Errorf("records at debug, info, warn (-want +got):\n%s\n%s", diff, buf)
			}
		})
	}

	t.Run("reset", func(t *testing.T) {
		l.Reset()
		if got := l.String(); got != "default:info" {
			t.Errorf("after Reset: %q", got)
		}
		logAll()
		if got := count("d"); got != 0 {
			t.Errorf("debug records after Reset: %d", got)
		}
	})

	t.Run("component attribute kept", func(t *testing.T) {
		buf.Reset()
		proxy.Info("hello")
		if !strings.Contains(buf.String(), "component=proxy") {
			t.Errorf("record lost its attributes: %q", buf)
		}
	})
}

func TestInitIsResetTarget(t *testing.T) {
	l, _ := newTest(slog.LevelInfo)
	if err := l.Init("warn,proxy:debug"); err != nil {
		t.Fatal(err)
	}
	if err := l.Set("error"); err != nil {
		t.Fatal(err)
	}
	l.Reset()
	if diff := cmp.Diff("default:warn proxy:debug", l.String()); diff != "" {
		t.Errorf("after Reset (-want +got):\n%s", diff)
	}
}

func TestNewComponentGetsCurrentLevel(t *testing.T) {
	l, _ := newTest(slog.LevelInfo)
	if err := l.Set("late:debug"); err != nil {
		t.Fatal(err)
	}
	lg := slog.New(l.Handler()).With(ComponentKey, "late")
	if !lg.Enabled(context.Background(), slog.LevelDebug) {
		t.Error("a logger created after Set does not see its component's level")
	}
	other := slog.New(l.Handler()).With(ComponentKey, "other")
	if other.Enabled(context.Background(), slog.LevelDebug) {
		t.Error("a component without an override is not at the default level")
	}
}

func TestConcurrent(t *testing.T) {
	l, _ := newTest(slog.LevelInfo)
	root := slog.New(l.Handler())
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 200 {
				lg := root.With(ComponentKey, string(rune('a'+(i+j)%6)))
				lg.Debug("x")
				if j%50 == 0 {
					_ = l.Set("debug,a:warn")
					l.Reset()
					_ = l.String()
				}
			}
		})
	}
	wg.Wait()
}

// Enabled runs for every log call, including the ones filtered out, so it
// must not allocate.
func TestEnabledNoAllocs(t *testing.T) {
	l, _ := newTest(slog.LevelInfo)
	lg := slog.New(l.Handler()).With(ComponentKey, "proxy")
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() { lg.Enabled(ctx, slog.LevelDebug) }); n != 0 {
		t.Errorf("Enabled allocates %v times", n)
	}
	if n := testing.AllocsPerRun(1000, func() { lg.Debug("filtered", "k", 1) }); n != 0 {
		t.Errorf("a filtered Debug call allocates %v times", n)
	}
}

func BenchmarkFilteredDebug(b *testing.B) {
	l, _ := newTest(slog.LevelInfo)
	lg := slog.New(l.Handler()).With(ComponentKey, "proxy")
	b.ReportAllocs()
	for b.Loop() {
		lg.Debug("filtered", "k", 1)
	}
}
