package watchdog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const mib = 1 << 20

// TestDecider feeds readings taken every 5 s and checks when it stops.
func TestDecider(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	// flat returns n readings with CPU growing by perStep each.
	flat := func(n int, perStep time.Duration, rss uint64) []step {
		var s []step
		for i := range n {
			s = append(s, step{cpu: time.Duration(i) * perStep, rss: rss})
		}
		return s
	}
	tests := []struct {
		name     string
		lim      Limits
		steps    []step
		wantAt   int    // index of the reading that breaches, -1 for none
		wantKind string // "memory" or "cpu"
	}{
		{"idle agent", DefaultLimits(), flat(40, 5*time.Millisecond, 20*mib), -1, ""},
		{"memory over for three readings", Limits{Memory: 100 * mib},
			[]step{{0, 50 * mib}, {0, 150 * mib}, {0, 150 * mib}, {0, 150 * mib}, {0, 150 * mib}}, 3, "memory"},
		{"a memory peak that goes away is not a breach", Limits{Memory: 100 * mib},
			[]step{{0, 150 * mib}, {0, 150 * mib}, {0, 50 * mib}, {0, 150 * mib}, {0, 150 * mib}, {0, 50 * mib}}, -1, ""},
		{"memory at the limit is allowed", Limits{Memory: 100 * mib}, flat(10, 0, 100*mib), -1, ""},
		{"memory limit off", Limits{}, flat(10, time.Second, 1<<40), -1, ""},
		// 5 s of CPU per 5 s reading: a spinning core. Judged once the
		// window (60 s = 12 steps) is full: reading 12.
		{"spinning core", DefaultLimits(), flat(20, 5*time.Second, 20*mib), 12, "cpu"},
		// 0.4 s per 5 s = 8 %: under 10 % forever.
		{"busy but under the limit", DefaultLimits(), flat(40, 400*time.Millisecond, 20*mib), -1, ""},
		// 0.6 s per 5 s = 12 %: over once a window is full.
		{"just over the limit", DefaultLimits(), flat(40, 600*time.Millisecond, 20*mib), 12, "cpu"},
		// A 5 s burst at start (enrolling, a backlog) averaged over the
		// first minute is 8.3 %: allowed.
		{"startup burst", DefaultLimits(), append([]step{{0, 20 * mib}, {5 * time.Second, 20 * mib}}, shift(flat(30, 0, 20*mib), 5*time.Second)...), -1, ""},
		{"cpu limit off", Limits{Memory: DefaultMemory}, flat(20, 5*time.Second, 20*mib), -1, ""},
		{"custom window", Limits{CPU: 0.5, CPUWindow: 10 * time.Second}, flat(10, 3*time.Second, 0), 2, "cpu"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDecider(tt.lim)
			got := -1
			var b *Breach
			for i, s := range tt.steps {
				if b = d.Observe(Reading{At: t0.Add(time.Duration(i) * 5 * time.Second), CPU: s.cpu, RSS: s.rss}); b != nil {
					got = i
					break
				}
			}
			require.Equal(t, tt.wantAt, got, "breach at reading")
			if tt.wantAt >= 0 {
				require.Equal(t, tt.wantKind, b.Kind)
				require.NotEmpty(t, b.Reason)
			}
		})
	}
}

type step struct {
	cpu time.Duration // total CPU time at this reading
	rss uint64
}

// shift adds by to every step's CPU time.
func shift(s []step, by time.Duration) []step {
	for i := range s {
		s[i].cpu += by
	}
	return s
}

func TestDeciderReasons(t *testing.T) {
	t0 := time.Unix(0, 0)
	d := NewDecider(Limits{Memory: 100 * mib})
	var b *Breach
	for i := range 3 {
		b = d.Observe(Reading{At: t0.Add(time.Duration(i) * time.Second), RSS: 150 * mib})
	}
	require.Equal(t, "resident memory 150.0 MiB is over the limit of 100.0 MiB (3 readings in a row)", b.Reason)
	d = NewDecider(Limits{CPU: 0.1, CPUWindow: time.Minute})
	require.Nil(t, d.Observe(Reading{At: t0}))
	b = d.Observe(Reading{At: t0.Add(time.Minute), CPU: 30 * time.Second})
	require.Equal(t, "used 30s of CPU in the last 1m0s (50.0% of a core), over the limit of 10.0% of a core", b.Reason)
}

func TestParse(t *testing.T) {
	for in, want := range map[string]uint64{"200MiB": 200 * mib, "1GiB": 1 << 30, "512 KiB": 512 << 10, "200MB": 200 * mib, "off": 0} {
		got, err := ParseBytes(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "200", "-1MiB", "1.5GiB", "lots", "0MiB", "99999999999999GiB"} {
		_, err := ParseBytes(bad)
		require.ErrorContains(t, err, fmt.Sprintf("bad memory size %q", bad))
	}
	for in, want := range map[string]float64{"10%": 0.1, "150%": 1.5, "0.5%": 0.005, "off": 0} {
		got, err := ParseCPU(in)
		require.NoError(t, err, in)
		require.InDelta(t, want, got, 1e-12, in)
	}
	for _, bad := range []string{"", "10", "0.1", "-5%", "0%", "x%"} {
		_, err := ParseCPU(bad)
		require.ErrorContains(t, err, fmt.Sprintf("bad CPU limit %q", bad))
	}
}

func TestReadSelf(t *testing.T) {
	r, err := ReadSelf()
	require.NoError(t, err)
	require.Positive(t, r.RSS)
	require.Positive(t, r.CPU)
}

// TestRealProcessOverLimits runs this test binary as a helper that holds
// more memory, or spins more CPU, than a small limit, and checks that the
// watchdog stops it with ExitCode and says why.
func TestRealProcessOverLimits(t *testing.T) {
	for _, tt := range []struct{ mode, want string }{
		{"memory", "resident memory"},
		{"cpu", "of CPU in the last"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestWatchdogHelper$")
			cmd.Env = append(os.Environ(), "TEND_WATCHDOG_HELPER="+tt.mode)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			require.True(t, errors.As(err, &ee), "helper should fail: %v\n%s", err, out)
			require.Equal(t, ExitCode, ee.ExitCode(), "%s", out)
			require.Contains(t, string(out), tt.want)
		})
	}
}

var sink [][]byte

// TestWatchdogHelper is the helper process of TestRealProcessOverLimits;
// it does nothing in a normal test run.
func TestWatchdogHelper(t *testing.T) {
	mode := os.Getenv("TEND_WATCHDOG_HELPER")
	if mode == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := Config{Interval: 20 * time.Millisecond}
	switch mode {
	case "memory":
		cfg.Limits = Limits{Memory: 64 * mib}
		go func() {
			for range 16 { // 128 MiB, touched
				b := make([]byte, 8*mib)
				for i := range b {
					b[i] = 1
				}
				sink = append(sink, b)
			}
		}()
	case "cpu":
		cfg.Limits = Limits{CPU: 0.2, CPUWindow: 300 * time.Millisecond}
		go func() {
			for x := 0; ; x++ {
				if x%1_000_000 == 0 {
					runtime.Gosched()
				}
			}
		}()
	}
	b, err := Run(ctx, cfg)
	if err != nil || b == nil {
		fmt.Println("no breach:", err)
		os.Exit(1)
	}
	fmt.Println("stopping:", b.Reason)
	os.Exit(ExitCode)
}
