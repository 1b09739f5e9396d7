package bench

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/agent/stream"
	"tend.dev/tend/controlplane/server"
	"tend.dev/tend/internal/policy"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	require.Zero(t, h.Quantile(0.99))
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	require.EqualValues(t, 1000, h.Count())
	require.Equal(t, time.Second, h.Max())
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.Quantile(c.q)
		require.InEpsilon(t, float64(c.want), float64(got), 0.04, "q%.2f = %s, want about %s", c.q, got, c.want)
	}
	// Small values are exact.
	var s Histogram
	s.RecordN(7, 3)
	require.Equal(t, time.Duration(7), s.Quantile(0.5))
}

func TestBucketsAreMonotonic(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<20; v += 1 + v/64 {
		b := bucketOf(v)
		require.GreaterOrEqual(t, b, prev)
		prev = b
		mid := bucketMid(b)
		require.InDelta(t, float64(v), float64(mid), float64(v)/16+1, "value %d in bucket %d (mid %d)", v, b, mid)
	}
	require.Less(t, bucketOf(1<<63-1), len(Histogram{}.counts))
}

// The bench's policies are valid policies (the same parser as tendctl
// apply).
func TestPoliciesParse(t *testing.T) {
	ps, err := policy.Parse("tend-bench.yaml", []byte(policies(3, 5*time.Second, 2, 3)))
	require.NoError(t, err)
	require.Len(t, ps, 3)
	require.Equal(t, "bench-2", ps[2].Name())
	require.Equal(t, 2, ps[0].Spec.Trigger.Failures)
	require.Equal(t, 3, ps[0].Spec.Trigger.Window)
}

func TestSourceIPs(t *testing.T) {
	require.Len(t, sourceIPs(100, 4), 4)
	ips := sourceIPs(130000, 4)
	require.Len(t, ips, 7)
	require.Equal(t, "127.0.0.2", ips[0].String())
	require.Equal(t, "127.0.0.8", ips[6].String())
}

func TestScrape(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "# HELP x y\n# TYPE x counter\ntend_ingest_commits_total 42\ntend_fleet_agents{status=\"connected\"} 3\ntend_fleet_agents{status=\"down\"} 1\nprocess_resident_memory_bytes 1.5e+07\n")
	}))
	defer srv.Close()
	m, err := Scrape(context.Background(), srv.URL)
	require.NoError(t, err)
	require.Equal(t, 42.0, m.Get("tend_ingest_commits_total"))
	require.Equal(t, 4.0, m.Sum("tend_fleet_agents"))
	require.Equal(t, 1.5e7, m.Get("process_resident_memory_bytes"))
}

func TestReadProcSelf(t *testing.T) {
	s, err := ReadProc(os.Getpid())
	require.NoError(t, err)
	require.Positive(t, s.RSS)
	require.Positive(t, s.Threads)
}

// checkConsistent checks the counts of a finished run: every result the
// simulated agents produced was acknowledged and stored exactly once, every
// agent held its stream, no task was refused (and, if wantTasks, failing
// checks got tasks).
func checkConsistent(t *testing.T, r *Result, agents int, wantTasks bool) {
	t.Helper()
	var out bytes.Buffer
	WriteTable(&out, r)
	t.Log("\n" + out.String())
	require.Equal(t, agents, r.AgentsHeld)
	require.Equal(t, agents, r.AgentsHeldMin)
	require.Zero(t, r.Drops)
	require.Positive(t, r.TotalGenerated)
	require.Equal(t, r.TotalGenerated, r.TotalStored, "every result stored once")
	require.Zero(t, r.Unacked)
	require.Zero(t, r.UnackedUpdates)
	require.Zero(t, r.TaskRejects)
	if wantTasks {
		require.Positive(t, r.TotalTasks, "failing checks got signed tasks")
	}
}

// A tiny real run against an in-process control plane given by address
// (the --controlplane-addr path).
func TestRunAgainstControlPlane(t *testing.T) {
	dir := t.TempDir()
	srv, err := server.New(server.Config{DataDir: dir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Log: quiet})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	const agents = 20
	r, err := Run(context.Background(), Config{
		Agents: agents, ChecksPerAgent: 2, Interval: time.Second, FailureRate: 1,
		Warmup: time.Second, Duration: 2 * time.Second,
		Addr: srv.AdminAddr(), AdminConf: filepath.Join(dir, server.AdminConfFile), MetricsURL: "http://" + srv.HTTPAddr() + "/metrics",
		Log: quiet,
	})
	require.NoError(t, err)
	checkConsistent(t, r, agents, true)
	require.Equal(t, agents, r.Enrolled)
}

// buildControlPlane builds tend-controlplane for the tests that start it.
func buildControlPlane(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds tend-controlplane")
	}
	bin := t.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+"/", "tend.dev/tend/cmd/tend-controlplane")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	return filepath.Join(bin, "tend-controlplane")
}

// The default path: the bench starts the real binary, reuses its state dir
// on a second run (no new enrollment), and restarts it (SIGKILL): every
// agent comes back.
func TestRunSpawnedWithRestart(t *testing.T) {
	cpBin := buildControlPlane(t)
	state := t.TempDir()
	cfg := Config{
		ChecksPerAgent: 1, Interval: time.Second, FailureRate: 0.5,
		Warmup: time.Second, Duration: 2 * time.Second,
		Spawn:    SpawnOptions{Command: []string{cpBin}, Args: []string{"--log-level", "warn"}},
		StateDir: state, Log: quiet,
	}
	const agents = 10
	r, err := Run(context.Background(), withAgents(cfg, agents))
	require.NoError(t, err)
	checkConsistent(t, r, agents, true)
	require.Equal(t, agents, r.Enrolled)
	require.Positive(t, r.CPRSSBytes)

	cfg.Restart = "kill"
	r, err = Run(context.Background(), withAgents(cfg, agents))
	require.NoError(t, err)
	// Incidents of the first run may still be open (verifying): no new
	// tasks are owed for those checks.
	checkConsistent(t, r, agents, false)
	require.Zero(t, r.Enrolled, "identities are reused from the state dir")
	require.NotNil(t, r.Restart)
	require.Equal(t, agents, r.Restart.Reconnected)
	require.FileExists(t, filepath.Join(state, fleetFile))
}

func withAgents(c Config, n int) Config {
	c.Agents = n
	return c
}

func TestPlot(t *testing.T) {
	rs := []*Result{
		{Agents: 1000, CPRSSPerAgentKB: 60, CPUMicrosPerResult: 80, ResultsPerSecond: 1000, OfferedPerSecond: 1000, FsyncsPerSecond: 150, AckP50Ms: 2, AckP99Ms: 9, TriggerP50Ms: 8, TriggerP99Ms: 30},
		{Agents: 5000, CPRSSPerAgentKB: 55, CPUMicrosPerResult: 60, ResultsPerSecond: 5000, OfferedPerSecond: 5000, FsyncsPerSecond: 180, AckP50Ms: 3, AckP99Ms: 12, TriggerP50Ms: 9, TriggerP99Ms: 40},
	}
	for _, name := range []string{"cost.svg", "cost.png"} {
		path := filepath.Join(t.TempDir(), name)
		require.NoError(t, Plot(path, rs))
		st, err := os.Stat(path)
		require.NoError(t, err)
		require.Positive(t, st.Size())
	}
	require.Error(t, Plot(filepath.Join(t.TempDir(), "cost.gif"), rs))
}

func TestValidate(t *testing.T) {
	ok := Config{Agents: 1, Spawn: SpawnOptions{Command: []string{"x"}}}
	require.NoError(t, ok.Validate())
	for _, bad := range []func(c *Config){
		func(c *Config) { c.Agents = 0 },
		func(c *Config) { c.Interval = time.Millisecond },
		func(c *Config) { c.FailureRate = 2 },
		func(c *Config) { c.Restart = "hup" },
		func(c *Config) { c.Addr = "127.0.0.1:1"; c.AdminConf = "a"; c.Restart = "kill" },
		func(c *Config) { c.Spawn.Command = nil },
	} {
		c := ok
		bad(&c)
		require.Error(t, c.Validate())
	}
	require.True(t, strings.HasPrefix(policyName(3), "bench-"))
}

// The restart scenario's connection rate and backoff envelope check, on
// made-up reconnections: one agent on the schedule, one too soon.
func TestRestartEnvelope(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	require.Equal(t, 2, peakPerSecond(t0, []time.Time{at(0.1), at(0.9), at(1.0), at(2.5)}))
	b := stream.DefaultBackoff()
	recs := []reconnection{
		// 1 s after the end (schedule: 0.8-1.2 s): refused; 1.6 s later: ok.
		{ended: at(0), attempts: []sessionAttempt{{at(1), 0}, {at(2.6), 1}}},
		// 0.5 s after the end: too soon.
		{ended: at(0), attempts: []sessionAttempt{{at(0.5), 0}, {at(2.7), 1}}},
	}
	var rr RestartResult
	rr.envelope(t0, []time.Time{at(2.7), at(2.8)}, []time.Time{at(2.6), at(2.7)}, recs, b)
	require.Equal(t, 1, rr.BackoffViolations)
	require.Equal(t, 4, rr.Attempts)
	require.Equal(t, 2, rr.PeakDialsPerSecond)
	require.Equal(t, 2, rr.PeakWelcomesPerSecond)
	require.InDelta(t, 0.5, rr.EarliestRetrySeconds, 1e-9)
	// Both agents' retries fall on or after 2.6 s, the first accept: the
	// envelope allows both in one second at most.
	require.GreaterOrEqual(t, rr.EnvelopePeakPerSecond, 1)
	require.LessOrEqual(t, rr.EnvelopePeakPerSecond, 2)
}
