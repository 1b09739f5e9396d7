// Package bench is tend-bench: it simulates a fleet of agents in one
// process against a real control plane and measures what the scale targets
// of docs/BENCHMARKS.md are about: agents held, results durably committed
// per second, latencies, the control plane's memory, CPU and fsyncs, and
// the time to reconnect after a control-plane restart.
//
// Each simulated agent is enrolled with a real join token, holds its own
// TCP connection, TLS session (its own client certificate) and stream,
// speaks the agent protocol as tend-agent does (Hello, batches chained by
// sequence and acknowledged once durable, heartbeats at the interval the
// control plane gives, signed tasks verified and reported, gRPC's reconnect
// backoff), and binds its connection to one of several 127.0.0.x source
// addresses, so that a fleet can exceed the ephemeral port range.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"tend.dev/tend/agent/stream"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// Config is one bench run.
type Config struct {
	// The simulated fleet.
	Agents         int
	ChecksPerAgent int           // one policy per check, each evaluated by the trigger engine
	Interval       time.Duration // check interval
	// FailureRate is the chance that a healthy check starts failing on a
	// run; it then fails until the control plane's task arrives.
	FailureRate float64
	// TriggerFailures of the last TriggerWindow results fail: triggered.
	TriggerFailures, TriggerWindow int
	RampRate                       float64       // agents started per second
	Warmup                         time.Duration // after all are connected, before measuring
	Duration                       time.Duration // the measurement window
	MaxInFlight                    int           // batches in flight per agent (tend-agent: 4)
	BatchMax                       int           // results per batch (tend-agent: 500)
	SourceAddrs                    int           // 127.0.0.x source addresses (more are used if needed)
	// AlignedChecks: each agent runs all its checks at the same moment (a
	// random phase per agent), so that it sends one batch per interval, as
	// tend-agent does with checks of the same interval; false: each check
	// on its own jittered schedule, one result per message.
	AlignedChecks bool

	// The control plane: an existing one (Addr, AdminConf, optionally PID
	// and MetricsURL), or, when Addr is empty, one started with Spawn.
	Addr       string
	AdminConf  string
	PID        int
	MetricsURL string
	Spawn      SpawnOptions

	// StateDir keeps the spawned control plane's data dir and the enrolled
	// identities between runs ("" = a temporary dir, removed at the end).
	StateDir string
	// Restart: "" (none), "term" (SIGTERM) or "kill" (SIGKILL) the control
	// plane after the window, start it again on the same data dir, and
	// time the reconnection of every agent.
	Restart        string
	RestartTimeout time.Duration
	// ProfileDir receives CPU and heap profiles of the control plane taken
	// during the window (needs Spawn.Pprof).
	ProfileDir     string
	EnrollParallel int
	DrainTimeout   time.Duration
	Log            *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = 10 * time.Second
	}
	if c.TriggerFailures <= 0 {
		c.TriggerFailures = 1
	}
	if c.TriggerWindow < c.TriggerFailures {
		c.TriggerWindow = c.TriggerFailures
	}
	if c.RampRate <= 0 {
		c.RampRate = 1000
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.Duration <= 0 {
		c.Duration = 30 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 4
	}
	if c.BatchMax <= 0 {
		c.BatchMax = 500
	}
	if c.SourceAddrs <= 0 {
		c.SourceAddrs = 4
	}
	if c.RestartTimeout <= 0 {
		c.RestartTimeout = 5 * time.Minute
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 60 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Validate checks a configuration.
func (c *Config) Validate() error {
	switch {
	case c.Agents < 1:
		return fmt.Errorf("agents: want at least 1, got %d", c.Agents)
	case c.ChecksPerAgent < 0 || c.ChecksPerAgent > 100:
		return fmt.Errorf("checks: want 0 to 100 per agent, got %d", c.ChecksPerAgent)
	case c.Interval > 0 && c.Interval < time.Second:
		return fmt.Errorf("interval: at least 1s (the policy minimum), got %s", c.Interval)
	case c.FailureRate < 0 || c.FailureRate > 1:
		return fmt.Errorf("failure rate: want 0 to 1, got %g", c.FailureRate)
	case c.TriggerWindow > 100:
		return fmt.Errorf("trigger window: at most 100, got %d", c.TriggerWindow)
	case c.Restart != "" && c.Restart != "term" && c.Restart != "kill":
		return fmt.Errorf("restart: want term or kill, got %q", c.Restart)
	case c.Restart != "" && c.Addr != "":
		return errors.New("restart: only a control plane the bench starts itself can be restarted")
	case c.Addr == "" && len(c.Spawn.Command) == 0:
		return errors.New("no control plane: give an address or a command to start one")
	case c.Addr != "" && c.AdminConf == "":
		return errors.New("an existing control plane needs its admin.conf")
	}
	return nil
}

// Result is what one run measured. Rates and latencies are over the
// measurement window; counts marked total are over the whole run.
type Result struct {
	Agents          int     `json:"agents"`
	ChecksPerAgent  int     `json:"checksPerAgent"`
	IntervalSeconds float64 `json:"intervalSeconds"`
	FailureRate     float64 `json:"failureRate"`
	Trigger         string  `json:"trigger"`
	AlignedChecks   bool    `json:"alignedChecks,omitempty"`
	Transport       string  `json:"transport"`
	WindowSeconds   float64 `json:"windowSeconds"`
	SourceAddrs     int     `json:"sourceAddrs"`

	Enrolled         int     `json:"enrolled"`
	EnrollSeconds    float64 `json:"enrollSeconds"`
	EnrollPerSecond  float64 `json:"enrollPerSecond"`
	RampSeconds      float64 `json:"rampSeconds"`
	ConnectedAtStart int     `json:"connectedAtStart"`

	// T1
	AgentsHeld    int    `json:"agentsHeld"`
	AgentsHeldMin int    `json:"agentsHeldMin"`
	Drops         uint64 `json:"drops"`
	ConnectErrors uint64 `json:"connectErrors"`

	// T3
	ResultsPerSecond  float64 `json:"resultsPerSecond"`
	OfferedPerSecond  float64 `json:"offeredPerSecond"`
	CPStoredPerSecond float64 `json:"cpStoredPerSecond"`
	CommitsPerSecond  float64 `json:"commitsPerSecond"`
	ResultsPerCommit  float64 `json:"resultsPerCommit"`
	CommitMs          float64 `json:"commitMs"`
	SlowCommits       float64 `json:"slowCommits"` // over 128 ms, in the window
	HeartbeatsPerSec  float64 `json:"heartbeatsPerSecond"`
	BatchesPerSecond  float64 `json:"batchesPerSecond"`
	ResultsPerBatch   float64 `json:"resultsPerBatch"`
	BenchCPUPercent   float64 `json:"benchCpuPercent"`
	// The machine during the window: the share of time some task waited
	// for a CPU or for I/O (Linux PSI), and the 1-minute load average at
	// its end. High values mean the figures are pessimistic.
	MachineCPUPressure     float64 `json:"machineCpuPressurePercent"`
	MachineIOPressure      float64 `json:"machineIoPressurePercent"`
	LoadAverage            float64 `json:"loadAverage"`
	BenchRSSBytes          uint64  `json:"benchRssBytes"`
	AckSamples             uint64  `json:"ackSamples"`
	AckP50Ms               float64 `json:"ackP50Ms"`
	AckP99Ms               float64 `json:"ackP99Ms"`
	AckMaxMs               float64 `json:"ackMaxMs"`
	Triggers               uint64  `json:"triggers"`
	Tasks                  uint64  `json:"tasks"`
	TriggerSamples         uint64  `json:"triggerSamples"`
	TriggerP50Ms           float64 `json:"triggerToTaskP50Ms"`
	TriggerP99Ms           float64 `json:"triggerToTaskP99Ms"`
	TriggerMaxMs           float64 `json:"triggerToTaskMaxMs"`
	CPRSSBytes             uint64  `json:"cpRssBytes"`
	CPRSSAnonBytes         uint64  `json:"cpRssAnonBytes,omitempty"`
	CPHeapInuseBytes       uint64  `json:"cpHeapInuseBytes,omitempty"`
	CPStackInuseBytes      uint64  `json:"cpStackInuseBytes,omitempty"`
	CPRSSBaselineBytes     uint64  `json:"cpRssBaselineBytes"`
	CPRSSAnonBaselineBytes uint64  `json:"cpRssAnonBaselineBytes"`
	// CPRSSPerAgentKB is the growth of the anonymous RSS (heap, stacks)
	// over the idle control plane, per connected agent; CPRSSTotalPerAgentKB
	// the growth of the whole RSS, which also counts the pages of the
	// database file mapped in (they grow with the results stored, not with
	// the agents).
	CPRSSPerAgentKB      float64 `json:"cpRssPerAgentKB"`
	CPRSSTotalPerAgentKB float64 `json:"cpRssTotalPerAgentKB"`
	CPCPUPercent         float64 `json:"cpCpuPercent"`
	CPUMicrosPerResult   float64 `json:"cpuMicrosPerResult"`
	CPGoroutines         float64 `json:"cpGoroutines,omitempty"`
	Fsyncs               uint64  `json:"fsyncs"`
	FsyncsPerSecond      float64 `json:"fsyncsPerSecond"`
	FsyncMethod          string  `json:"fsyncMethod"`

	Restart *RestartResult `json:"restart,omitempty"`

	// Consistency over the whole run.
	TotalGenerated  uint64 `json:"totalGenerated"`
	TotalStored     uint64 `json:"totalStored"`
	TotalDuplicates uint64 `json:"totalDuplicates"`
	// AckedOnWelcome: results found durable on reconnect (the control
	// plane stopped between their commit and their ack); in TotalStored.
	AckedOnWelcome      uint64   `json:"ackedOnWelcome"`
	ConnectErrorReasons []string `json:"connectErrorReasons,omitempty"`
	Unacked             int      `json:"unacked"`
	UnackedUpdates      int      `json:"unackedTaskUpdates"`
	TotalTriggers       uint64   `json:"totalTriggers"`
	TotalTasks          uint64   `json:"totalTasks"`
	TaskRejects         uint64   `json:"taskRejects"`
	Unremediated        uint64   `json:"unremediated"`

	// Timeline: per second of the window, results acknowledged and the
	// slowest acknowledgement.
	Timeline            []Second `json:"timeline,omitempty"`
	WorstSecond         int      `json:"worstSecond"`
	WorstSecondAckMaxMs float64  `json:"worstSecondAckMaxMs"`

	Profiles []string `json:"profiles,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

// RestartResult is the --restart scenario.
type RestartResult struct {
	Signal string `json:"signal"`
	// DownSeconds: from the signal to the new process answering /healthz
	// (or welcoming its first agent, if that came first).
	DownSeconds float64 `json:"downSeconds"`
	// TotalSeconds: from the signal to every agent being connected again
	// (T8); AllSeconds: the same from the new process being up.
	AllSeconds   float64 `json:"allReconnectedSeconds"`
	TotalSeconds float64 `json:"totalSeconds"`
	P50Seconds   float64 `json:"p50Seconds"`
	P90Seconds   float64 `json:"p90Seconds"`
	Reconnected  int     `json:"reconnected"`
	Agents       int     `json:"agents"`
	// How long the successful dials took to get Welcome (TCP, TLS, Hello),
	// and when the last of them began (after ready): the backoff's share.
	DialToWelcomeP50Ms float64 `json:"dialToWelcomeP50Ms"`
	DialToWelcomeP99Ms float64 `json:"dialToWelcomeP99Ms"`
	LastDialSeconds    float64 `json:"lastDialSeconds"`
	// The connection rate, in 1 s buckets from the signal: the most
	// agents welcomed back in one, the most successful dials begun in one,
	// and the most session attempts (failed ones included) begun in one.
	PeakWelcomesPerSecond int `json:"peakWelcomesPerSecond"`
	PeakDialsPerSecond    int `json:"peakDialsPerSecond"`
	PeakAttemptsPerSecond int `json:"peakAttemptsPerSecond"`
	// The backoff envelope (1 s ×1.6 ±20%, max 120 s): EnvelopePeakPerSecond
	// is the most successful dials in one 1 s bucket that agents following
	// it could make, given when each one's session ended and when the new
	// control plane first took a connection (the maximum over simulated
	// runs of the schedule with random jitter); BackoffViolations counts
	// attempts that came sooner after the previous one (or the session's
	// end) than the envelope's lower edge, (1-jitter) × the schedule.
	EnvelopePeakPerSecond int     `json:"envelopePeakPerSecond"`
	BackoffViolations     int     `json:"backoffViolations"`
	Attempts              int     `json:"attempts"`
	EarliestRetrySeconds  float64 `json:"earliestRetrySeconds"`
	// TLS handshakes from the signal to the end: resumed sessions and full
	// handshakes (failed attempts included).
	Resumed        uint64 `json:"tlsResumed"`
	FullHandshakes uint64 `json:"tlsFullHandshakes"`
}

// Label is the selector label of the bench's policies and agents.
const Label = "tend-bench"

// policyName is the name of the bench's i-th policy (one per check).
func policyName(i int) string { return fmt.Sprintf("bench-%d", i) }

var benchPolicyRE = regexp.MustCompile(`^bench-[0-9]+$`)

// policies is the YAML of the bench's policies: each check of every
// simulated agent is one policy, so that every result is evaluated by the
// trigger engine, and a failure is remediated by a signed task without
// limits or cooldown (the simulated agent "runs" it at once).
func policies(n int, interval time.Duration, failures, window int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: %s}
spec:
  selector: {matchLabels: {%s: "yes"}}
  check:
    type: command
    interval: %s
    command: {argv: ["/bin/true"]}
  trigger: {failures: %d, window: %d}
  remediation:
    action: exec.run
    params: {argv: ["/bin/true"]}
    timeout: 10s
    verify: {within: 60s}
    maxAttempts: 3
    backoff: 1s
    cooldown: 0s
`, policyName(i), Label, interval, failures, window)
	}
	return b.String()
}

func randomSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// sourceIPs are the 127.0.0.x addresses the agents' connections bind to:
// at least n, and enough that each holds at most 20,000 connections.
func sourceIPs(agents, n int) []net.IP {
	n = max(n, (agents+19999)/20000)
	n = min(n, 250)
	ips := make([]net.IP, n)
	for i := range ips {
		ips[i] = net.IPv4(127, 0, 0, byte(2+i))
	}
	return ips
}

// Runner holds what a sequence of runs shares (a sweep): the state dir,
// the control plane's data dir and the enrolled identities.
type Runner struct {
	cfg      Config
	stateDir string
	tempDir  bool
	failed   bool // a run failed: keep the temporary dir (logs)
	fleet    *Fleet
}

// NewRunner prepares runs with cfg (Agents is set per run).
func NewRunner(cfg Config) (*Runner, error) {
	cfg.setDefaults()
	r := &Runner{cfg: cfg, stateDir: cfg.StateDir}
	if r.stateDir == "" {
		d, err := os.MkdirTemp("", "tend-bench-")
		if err != nil {
			return nil, err
		}
		r.stateDir, r.tempDir = d, true
	} else if err := os.MkdirAll(r.stateDir, 0o700); err != nil {
		return nil, err
	}
	return r, nil
}

// Close removes a temporary state dir, unless a run failed (its control
// plane's log is there).
func (r *Runner) Close() error {
	if r.tempDir && !r.failed {
		return os.RemoveAll(r.stateDir)
	}
	return nil
}

// StateDir is where the control plane's data and the identities are.
func (r *Runner) StateDir() string { return r.stateDir }

// Run is a single run with cfg.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	r, err := NewRunner(cfg)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Run(ctx, cfg.Agents)
}

// Run runs the bench with n agents.
func (r *Runner) Run(ctx context.Context, n int) (res *Result, err error) {
	cfg := r.cfg
	cfg.Agents = n
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	res = &Result{
		Agents: n, ChecksPerAgent: cfg.ChecksPerAgent, IntervalSeconds: cfg.Interval.Seconds(),
		FailureRate: cfg.FailureRate, Trigger: fmt.Sprintf("%d/%d", cfg.TriggerFailures, cfg.TriggerWindow), AlignedChecks: cfg.AlignedChecks,
		Transport: "gRPC over mTLS (TLS 1.3, one connection per agent)", WindowSeconds: cfg.Duration.Seconds(),
	}

	// The control plane.
	var cp *ControlPlane
	if cfg.Addr == "" {
		spawn := cfg.Spawn
		spawn.DataDir = filepath.Join(r.stateDir, "controlplane")
		log.Info("starting control plane", "command", strings.Join(spawn.Command, " "), "data_dir", spawn.DataDir)
		cp, err = SpawnControlPlane(ctx, spawn)
		if err != nil {
			r.failed = true
			return nil, err
		}
		defer func() {
			cp.Stop()
			if err != nil {
				r.failed = true
				err = fmt.Errorf("%w (control plane log: %s)", err, cp.LogPath())
			}
		}()
		log.Info("control plane up", "pid", cp.PID(), "addr", cp.Addr, "metrics", cp.MetricsURL)
	} else {
		cp = &ControlPlane{Addr: cfg.Addr, AdminConf: cfg.AdminConf, MetricsURL: cfg.MetricsURL, pid: cfg.PID}
	}
	conf, err := cp.LoadAdmin()
	if err != nil {
		return nil, err
	}
	conf.Server = cp.Addr
	conn, err := conf.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	admin := adminv1.NewAdminServiceClient(conn)

	// The fleet's identities: cached in the state dir, for this CA only.
	if r.fleet == nil {
		r.fleet, err = LoadFleet(r.stateDir)
		if err != nil {
			return nil, err
		}
	}
	if len(r.fleet.CAPEM) > 0 && strings.TrimSpace(string(r.fleet.CAPEM)) != strings.TrimSpace(conf.CA) {
		log.Info("cached identities belong to another control plane: enrolling anew")
		if r.fleet, err = newFleet(); err != nil {
			return nil, err
		}
	}
	enrollStart := time.Now()
	before := len(r.fleet.Agents)
	err = r.fleet.Enroll(ctx, EnrollOptions{
		Server: cp.Addr, Admin: admin, Want: n, Prefix: "bench-" + randomSuffix(),
		Labels: map[string]string{Label: "yes"}, Parallel: cfg.EnrollParallel,
		Progress: func(done int) { log.Info("enrolling", "done", done, "of", n-before) },
	})
	if serr := r.fleet.Save(r.stateDir); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	res.Enrolled = len(r.fleet.Agents) - before
	res.EnrollSeconds = time.Since(enrollStart).Seconds()
	if res.Enrolled > 0 {
		res.EnrollPerSecond = float64(res.Enrolled) / res.EnrollSeconds
		log.Info("enrolled", "agents", res.Enrolled, "seconds", fmt.Sprintf("%.1f", res.EnrollSeconds))
	}

	if err := applyPolicies(ctx, admin, cfg); err != nil {
		return nil, err
	}

	// Idle baseline: the control plane with its fleet enrolled, nobody
	// connected.
	base := cpSample(ctx, cp)
	res.CPRSSBaselineBytes = base.RSS
	res.CPRSSAnonBaselineBytes = base.RSSAnon

	ips := sourceIPs(n, cfg.SourceAddrs)
	res.SourceAddrs = len(ips)
	sim := newSimFleet(cp.Addr, r.fleet, simOptions{
		srcIPs: ips, labels: map[string]string{Label: "yes"},
		failureRate: cfg.FailureRate, triggerFailures: cfg.TriggerFailures,
		maxInFlight: cfg.MaxInFlight, batchMax: cfg.BatchMax,
		giveUp:  time.Duration(cfg.TriggerWindow+3)*cfg.Interval + 60*time.Second,
		aligned: cfg.AlignedChecks,
	})
	agentsCtx, stopAgents := context.WithCancel(context.Background())
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopAgents()
			sim.wg.Wait()
		}
	}
	defer stop()

	// Ramp up.
	log.Info("connecting agents", "agents", n, "per_second", cfg.RampRate, "source_addrs", len(ips))
	rampStart := time.Now()
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		sim.start(agentsCtx, i)
		if wait := time.Until(rampStart.Add(time.Duration(float64(i+1) / cfg.RampRate * float64(time.Second)))); wait > 0 {
			time.Sleep(wait)
		}
	}
	rampDeadline := time.Now().Add(60*time.Second + time.Duration(float64(n)/cfg.RampRate*float64(time.Second)))
	lastLog := time.Now()
	for int(sim.connected.Load()) < n && time.Now().Before(rampDeadline) {
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
		if time.Since(lastLog) > 5*time.Second {
			log.Info("waiting for agents", "connected", sim.connected.Load(), "of", n)
			lastLog = time.Now()
		}
	}
	res.RampSeconds = time.Since(rampStart).Seconds()
	res.ConnectedAtStart = int(sim.connected.Load())
	if res.ConnectedAtStart < n {
		res.Notes = append(res.Notes, fmt.Sprintf("only %d of %d agents connected after the ramp-up", res.ConnectedAtStart, n))
	}
	log.Info("agents connected", "connected", res.ConnectedAtStart, "seconds", fmt.Sprintf("%.1f", res.RampSeconds))

	if err := sleepCtx(ctx, cfg.Warmup); err != nil {
		return nil, err
	}

	// The measurement window.
	log.Info("measuring", "window", cfg.Duration)
	sim.resetHistograms()
	tl := &timeline{start: time.Now()}
	sim.timeline.Store(tl)
	c0 := sim.c.snapshot()
	p0 := cpSample(ctx, cp)
	f0, perfOK := cp.Fsyncs()
	self0, _ := ReadProc(os.Getpid())
	psi0 := readPressure()
	profDone := make(chan string, 1)
	if cfg.ProfileDir != "" && cp.PprofURL != "" {
		// Lock contention is counted from the start: the window's share is
		// `go tool pprof -base mutex-N-start.pprof mutex-N.pprof`.
		_ = fetch(ctx, cp.PprofURL+"/debug/pprof/mutex", filepath.Join(cfg.ProfileDir, fmt.Sprintf("mutex-%d-start.pprof", n)))
		go func() {
			path := filepath.Join(cfg.ProfileDir, fmt.Sprintf("cpu-%d.pprof", n))
			if err := fetch(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", cp.PprofURL, int(cfg.Duration.Seconds())), path); err != nil {
				log.Warn("cpu profile", "err", err)
				path = ""
			}
			profDone <- path
		}()
	} else {
		profDone <- ""
	}
	start := time.Now()
	held := n
	var peakRSS uint64
	for time.Since(start) < cfg.Duration {
		if err := sleepCtx(ctx, min(time.Second, cfg.Duration-time.Since(start))); err != nil {
			return nil, err
		}
		held = min(held, int(sim.connected.Load()))
		if s := cpSample(ctx, cp); s.RSS > peakRSS {
			peakRSS = s.RSS
		}
	}
	secs := time.Since(start).Seconds()
	sim.timeline.Store(nil)
	c1 := sim.c.snapshot()
	p1 := cpSample(ctx, cp)
	f1, _ := cp.Fsyncs()
	self1, _ := ReadProc(os.Getpid())
	psi1 := readPressure()
	res.MachineCPUPressure = 100 * (psi1.cpu - psi0.cpu).Seconds() / secs
	res.MachineIOPressure = 100 * (psi1.io - psi0.io).Seconds() / secs
	res.LoadAverage = loadAverage()
	res.AgentsHeld = int(sim.connected.Load())
	res.AgentsHeldMin = min(held, res.AgentsHeld)
	if path := <-profDone; path != "" {
		res.Profiles = append(res.Profiles, path)
	}
	if cfg.ProfileDir != "" && cp.PprofURL != "" {
		for _, kind := range []string{"heap", "mutex"} {
			path := filepath.Join(cfg.ProfileDir, fmt.Sprintf("%s-%d.pprof", kind, n))
			if err := fetch(ctx, cp.PprofURL+"/debug/pprof/"+kind, path); err == nil {
				res.Profiles = append(res.Profiles, path)
			}
		}
	}

	acked := c1.Acked - c0.Acked
	res.ResultsPerSecond = float64(acked) / secs
	res.OfferedPerSecond = float64(c1.Generated-c0.Generated) / secs
	res.HeartbeatsPerSec = float64(c1.Heartbeats-c0.Heartbeats) / secs
	res.BatchesPerSecond = float64(c1.BatchesAcked-c0.BatchesAcked) / secs
	if b := c1.BatchesAcked - c0.BatchesAcked; b > 0 {
		res.ResultsPerBatch = float64(acked) / float64(b)
	}
	res.Timeline = tl.seconds(int(secs))
	for _, sec := range res.Timeline {
		if sec.AckMaxMs > res.WorstSecondAckMaxMs {
			res.WorstSecondAckMaxMs, res.WorstSecond = sec.AckMaxMs, sec.Second
		}
	}
	ah, th := sim.ackHist.Load(), sim.trigHist.Load()
	res.AckSamples = ah.Count()
	res.AckP50Ms, res.AckP99Ms, res.AckMaxMs = ms(ah.Quantile(0.5)), ms(ah.Quantile(0.99)), ms(ah.Max())
	res.Triggers = c1.Triggers - c0.Triggers
	res.Tasks = c1.Tasks - c0.Tasks
	res.TriggerSamples = th.Count()
	res.TriggerP50Ms, res.TriggerP99Ms, res.TriggerMaxMs = ms(th.Quantile(0.5)), ms(th.Quantile(0.99)), ms(th.Max())
	res.CPRSSBytes = max(p1.RSS, peakRSS)
	res.CPRSSAnonBytes = p1.RSSAnon
	if res.CPRSSBytes > base.RSS {
		res.CPRSSTotalPerAgentKB = float64(res.CPRSSBytes-base.RSS) / float64(n) / 1024
	}
	if p1.RSSAnon > base.RSSAnon {
		res.CPRSSPerAgentKB = float64(p1.RSSAnon-base.RSSAnon) / float64(n) / 1024
	} else if base.RSSAnon == 0 {
		res.CPRSSPerAgentKB = res.CPRSSTotalPerAgentKB // no /proc: whole RSS
	}
	cpu := (p1.CPU - p0.CPU).Seconds()
	res.CPCPUPercent = 100 * cpu / secs
	if acked > 0 {
		res.CPUMicrosPerResult = cpu * 1e6 / float64(acked)
	}
	res.CPGoroutines = p1.Goroutines
	res.CPHeapInuseBytes, res.CPStackInuseBytes = uint64(p1.HeapInuse), uint64(p1.StackInuse)
	if p1.Commits > p0.Commits {
		res.CommitsPerSecond = (p1.Commits - p0.Commits) / secs
		res.ResultsPerCommit = (p1.Stored - p0.Stored) / (p1.Commits - p0.Commits)
		res.CommitMs = 1000 * (p1.CommitSeconds - p0.CommitSeconds) / (p1.Commits - p0.Commits)
		res.SlowCommits = (p1.Commits - p1.CommitsFast) - (p0.Commits - p0.CommitsFast)
	}
	res.CPStoredPerSecond = (p1.Stored - p0.Stored) / secs
	if perfOK {
		res.Fsyncs = f1 - f0
		res.FsyncMethod = "perf stat: fsync+fdatasync system calls of the control plane"
	} else if p1.Commits > 0 {
		res.Fsyncs = uint64(2 * (p1.Commits - p0.Commits))
		res.FsyncMethod = "estimate: 2 fdatasync per ingest group commit (bbolt: data, then meta page); other writes not counted"
	} else {
		res.FsyncMethod = "unknown (no perf, no /metrics)"
	}
	res.FsyncsPerSecond = float64(res.Fsyncs) / secs
	res.BenchCPUPercent = 100 * (self1.CPU - self0.CPU).Seconds() / secs
	res.BenchRSSBytes = self1.RSS
	if p0.Source != "" {
		res.Notes = append(res.Notes, "control-plane RSS and CPU from "+p0.Source)
	}

	// Restart.
	if cfg.Restart != "" {
		rr, err := restart(ctx, cfg, cp, sim, n)
		if err != nil {
			return nil, err
		}
		res.Restart = rr
	}

	// Drain: stop producing, wait until everything is acknowledged.
	sim.generating.Store(false)
	drainDeadline := time.Now().Add(cfg.DrainTimeout)
	for {
		pr, pu := sim.pending()
		res.Unacked, res.UnackedUpdates = pr, pu
		if (pr == 0 && pu == 0) || time.Now().After(drainDeadline) {
			break
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
	stop()
	end := sim.c.snapshot()
	res.Drops = end.Drops
	res.ConnectErrors = end.ConnectErrs
	res.TotalGenerated = end.Generated
	res.TotalStored = end.Stored + end.AckedOnWelcome
	res.AckedOnWelcome = end.AckedOnWelcome
	res.ConnectErrorReasons = sim.connectErrors()
	res.TotalDuplicates = end.Duplicates
	res.TotalTriggers = end.Triggers
	res.TotalTasks = end.Tasks
	res.TaskRejects = end.TaskRejects
	res.Unremediated = end.Unremediated
	if res.Unacked > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d results still unacknowledged after %s of draining", res.Unacked, cfg.DrainTimeout))
	}
	return res, nil
}

func applyPolicies(ctx context.Context, admin adminv1.AdminServiceClient, cfg Config) error {
	// Remove bench policies beyond this run's checks (from an earlier run
	// on the same control plane).
	list, err := admin.ListPolicies(ctx, &adminv1.ListPoliciesRequest{})
	if err != nil {
		return fmt.Errorf("list policies: %w", err)
	}
	for _, p := range list.GetPolicies() {
		var i int
		if benchPolicyRE.MatchString(p.GetName()) {
			if _, err := fmt.Sscanf(p.GetName(), "bench-%d", &i); err == nil && i >= cfg.ChecksPerAgent {
				if _, err := admin.DeletePolicy(ctx, &adminv1.DeletePolicyRequest{Name: p.GetName()}); err != nil {
					return fmt.Errorf("delete policy %s: %w", p.GetName(), err)
				}
			}
		}
	}
	if cfg.ChecksPerAgent == 0 {
		return nil
	}
	_, err = admin.ApplyPolicies(ctx, &adminv1.ApplyPoliciesRequest{
		Filename: "tend-bench.yaml",
		Content:  []byte(policies(cfg.ChecksPerAgent, cfg.Interval, cfg.TriggerFailures, cfg.TriggerWindow)),
	})
	if err != nil {
		return fmt.Errorf("apply bench policies: %w", err)
	}
	return nil
}

// restart stops the control plane with the configured signal, starts it
// again on the same data dir, and waits until every agent is connected on
// a new session.
func restart(ctx context.Context, cfg Config, cp *ControlPlane, sim *simFleet, n int) (*RestartResult, error) {
	sig, name := syscall.SIGTERM, "SIGTERM"
	if cfg.Restart == "kill" {
		sig, name = syscall.SIGKILL, "SIGKILL"
	}
	cfg.Log.Info("restarting the control plane", "signal", name)
	sim.expectDown.Store(true)
	defer sim.expectDown.Store(false)
	t0 := time.Now()
	resumed0, full0 := sim.c.Resumed.Load(), sim.c.FullHandshakes.Load()
	_, up, err := cp.Restart(ctx, sig)
	if err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	rr := &RestartResult{Signal: name, Agents: n, DownSeconds: up.Sub(t0).Seconds()}
	deadline := up.Add(cfg.RestartTimeout)
	lastLog := time.Now()
	var times, dials []time.Time
	for {
		times, dials = sim.reconnectedSince(t0)
		if len(times) >= n || time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
		if time.Since(lastLog) > 5*time.Second {
			cfg.Log.Info("waiting for agents to reconnect", "reconnected", len(times), "of", n)
			lastLog = time.Now()
		}
	}
	rr.Reconnected = len(times)
	rr.Resumed, rr.FullHandshakes = sim.c.Resumed.Load()-resumed0, sim.c.FullHandshakes.Load()-full0
	if len(times) > 0 {
		// Under a reconnect storm /healthz can answer late: the first
		// agent back proves the control plane was up.
		first := times[0]
		for _, t := range times {
			if t.Before(first) {
				first = t
			}
		}
		if first.Before(up) {
			up = first
			rr.DownSeconds = up.Sub(t0).Seconds()
		}
		handshake := make([]time.Duration, len(times))
		for i := range times {
			handshake[i] = times[i].Sub(dials[i])
		}
		sort.Slice(handshake, func(i, j int) bool { return handshake[i] < handshake[j] })
		rr.DialToWelcomeP50Ms = ms(handshake[(len(handshake)-1)/2])
		rr.DialToWelcomeP99Ms = ms(handshake[(len(handshake)-1)*99/100])
		sort.Slice(dials, func(i, j int) bool { return dials[i].Before(dials[j]) })
		rr.LastDialSeconds = dials[len(dials)-1].Sub(up).Seconds()
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		after := func(t time.Time) float64 { return max(t.Sub(up).Seconds(), 0) }
		rr.P50Seconds = after(times[(len(times)-1)/2])
		rr.P90Seconds = after(times[(len(times)-1)*9/10])
		rr.AllSeconds = after(times[len(times)-1])
		rr.TotalSeconds = times[len(times)-1].Sub(t0).Seconds()
	}
	if len(dials) > 0 {
		rr.envelope(t0, times, dials, sim.reconnectionsSince(t0), sim.backoff)
	}
	cfg.Log.Info("reconnected", "agents", rr.Reconnected, "of", n, "after_ready_s", fmt.Sprintf("%.1f", rr.AllSeconds))
	return rr, nil
}

// peakPerSecond is the most of ts in one 1 s bucket from t0.
func peakPerSecond(t0 time.Time, ts []time.Time) int {
	n := map[int64]int{}
	peak := 0
	for _, t := range ts {
		b := int64(t.Sub(t0) / time.Second)
		if t.Before(t0) {
			b = -1
		}
		n[b]++
		peak = max(peak, n[b])
	}
	return peak
}

// envelopeTrials is how many runs of the backoff schedule envelope
// simulates.
const envelopeTrials = 200

// envelope measures the reconnection's rate and checks it against the
// backoff envelope: see RestartResult.
func (rr *RestartResult) envelope(t0 time.Time, welcomes, dials []time.Time, recs []reconnection, b stream.BackoffConfig) {
	rr.PeakWelcomesPerSecond = peakPerSecond(t0, welcomes)
	rr.PeakDialsPerSecond = peakPerSecond(t0, dials)
	accept := dials[0] // the new control plane's first connection
	for _, d := range dials {
		if d.Before(accept) {
			accept = d
		}
	}
	var attempts []time.Time
	rr.EarliestRetrySeconds = -1
	for _, r := range recs {
		prev := r.ended
		for _, a := range r.attempts {
			attempts = append(attempts, a.at)
			rr.Attempts++
			if a.backoff >= 0 && a.at.Sub(prev) < b.Delay(a.backoff, 0)-time.Millisecond {
				rr.BackoffViolations++
			}
			if rr.EarliestRetrySeconds < 0 || a.at.Sub(r.ended).Seconds() < rr.EarliestRetrySeconds {
				rr.EarliestRetrySeconds = a.at.Sub(r.ended).Seconds()
			}
			prev = a.at
		}
	}
	rr.PeakAttemptsPerSecond = peakPerSecond(t0, attempts)
	// The envelope: each agent retries from the end of its session on the
	// schedule, from the backoff attempt its first retry used, with random
	// jitter; the first attempt at or after accept succeeds.
	rnd := mrand.New(mrand.NewPCG(1, 2))
	ok := make([]time.Time, 0, len(recs))
	for range envelopeTrials {
		ok = ok[:0]
		for _, r := range recs {
			if len(r.attempts) == 0 || r.attempts[0].backoff < 0 {
				continue
			}
			at, k := r.ended, r.attempts[0].backoff
			for {
				at = at.Add(b.Delay(k, rnd.Float64()))
				k++
				if !at.Before(accept) {
					ok = append(ok, at)
					break
				}
			}
		}
		rr.EnvelopePeakPerSecond = max(rr.EnvelopePeakPerSecond, peakPerSecond(t0, ok))
	}
}

// cpReading is the control plane's state at one moment.
type cpReading struct {
	RSS, RSSAnon    uint64
	CPU             time.Duration
	Commits, Stored float64
	Goroutines      float64
	HeapInuse       float64
	CommitSeconds   float64
	CommitsFast     float64 // commits of at most 128 ms
	StackInuse      float64
	Source          string // non-empty when not from /proc
}

// cpSample reads the control plane's memory and CPU from /proc when its
// pid is known, else from its /metrics (process_*), and its ingest counters
// from /metrics.
func cpSample(ctx context.Context, cp *ControlPlane) cpReading {
	var r cpReading
	var m Metrics
	if cp.MetricsURL != "" {
		m, _ = Scrape(ctx, cp.MetricsURL)
	}
	if pid := cp.PID(); pid > 0 {
		if s, err := ReadProc(pid); err == nil {
			r.RSS, r.RSSAnon, r.CPU = s.RSS, s.RSSAnon, s.CPU
		}
	} else if m != nil {
		r.RSS = uint64(m.Get("process_resident_memory_bytes"))
		r.CPU = time.Duration(m.Get("process_cpu_seconds_total") * float64(time.Second))
		r.Source = "its /metrics (process_resident_memory_bytes, process_cpu_seconds_total)"
	}
	if m != nil {
		r.Commits = m.Get("tend_ingest_commits_total")
		r.Stored = m.Get("tend_ingest_results_total")
		r.Goroutines = m.Get("go_goroutines")
		r.HeapInuse = m.Get("go_memstats_heap_inuse_bytes")
		r.CommitSeconds = m.Get("tend_ingest_commit_seconds_sum")
		r.CommitsFast = m.Get(`tend_ingest_commit_seconds_bucket{le="0.128"}`)
		r.StackInuse = m.Get("go_memstats_stack_inuse_bytes")
	}
	return r
}

func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
