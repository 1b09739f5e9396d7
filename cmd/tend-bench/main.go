// Command tend-bench measures how large a fleet one control plane holds: it
// simulates N agents in one process (each with its own mTLS connection and
// stream) against a real tend-controlplane, and prints agents held, results
// durably committed per second, latencies, and the control plane's memory,
// CPU and fsyncs (docs/BENCHMARKS.md). With --agent-footprint it measures a
// real tend-agent instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tend.dev/tend/internal/bench"
	"tend.dev/tend/internal/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Hidden: the control plane with pprof, which --profile starts.
	if len(os.Args) > 1 && os.Args[1] == "controlplane" {
		if err := bench.RunProfiledControlPlane(ctx, os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "tend-bench controlplane:", err)
			os.Exit(1)
		}
		return
	}
	// The simulated fleet allocates as fast as the control plane it
	// measures; its own garbage collection would show up as latency in
	// the control plane's figures. It collects less often than the control
	// plane (which keeps the runtime's default, or GOGC from the
	// environment), unless GOGC is set.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	os.Exit(run(ctx))
}

func run(ctx context.Context) int {
	fs := flag.NewFlagSet("tend-bench", flag.ContinueOnError)
	var (
		cfg        bench.Config
		trigger    string
		binDir     string
		cpArgs     string
		cpEnv      string
		sweep      string
		plotPath   string
		jsonOut    bool
		jsonFile   string
		profileDir string
		noPerf     bool
		footprint  bool
		logLevel   string
		selfProf   string
		replot     string
	)
	fs.IntVar(&cfg.Agents, "agents", 500, "simulated agents")
	fs.IntVar(&cfg.ChecksPerAgent, "checks", 10, "checks per agent (one policy each; 0: heartbeats only)")
	fs.DurationVar(&cfg.Interval, "interval", 10*time.Second, "check interval")
	fs.Float64Var(&cfg.FailureRate, "failure-rate", 0.001, "chance that a healthy check starts failing on a run (it fails until its task arrives)")
	fs.StringVar(&trigger, "trigger", "1/1", "trigger of the bench policies: FAILURES/WINDOW")
	fs.Float64Var(&cfg.RampRate, "ramp", 1000, "agents connected per second during the ramp-up")
	fs.DurationVar(&cfg.Warmup, "warmup", -1, "wait after the ramp-up before measuring (default: one interval)")
	fs.DurationVar(&cfg.Duration, "duration", 30*time.Second, "measurement window")
	fs.IntVar(&cfg.MaxInFlight, "max-in-flight", 4, "result batches in flight per agent (tend-agent: 4)")
	fs.IntVar(&cfg.BatchMax, "batch-max", 500, "results per batch at most (tend-agent: 500)")
	fs.BoolVar(&cfg.AlignedChecks, "aligned", true, "run each agent's checks together at a random phase per agent, one batch per agent and interval, as tend-agent runs checks of the same interval; --aligned=false: each check on its own jittered schedule, one result per message (tend-agent before its checks were aligned)")
	fs.IntVar(&cfg.SourceAddrs, "source-addrs", 4, "127.0.0.x source addresses for the agents' connections (at least one per 20,000 agents)")
	fs.IntVar(&cfg.EnrollParallel, "enroll-parallel", 64, "enrollments in flight")
	fs.StringVar(&cfg.Addr, "controlplane-addr", "", "use this running control plane (gRPC address) instead of starting one")
	fs.StringVar(&cfg.AdminConf, "admin-config", "", "admin.conf of --controlplane-addr (default $TEND_CONFIG, else ./tend-data/admin.conf)")
	fs.IntVar(&cfg.PID, "controlplane-pid", 0, "pid of --controlplane-addr, to read its RSS and CPU from /proc (else from --metrics-url)")
	fs.StringVar(&cfg.MetricsURL, "metrics-url", "", "/metrics of --controlplane-addr (e.g. http://127.0.0.1:7480/metrics)")
	fs.StringVar(&binDir, "bin-dir", "bin", "directory of tend-controlplane and tend-agent")
	fs.StringVar(&cpArgs, "cp-args", "", "extra flags for the control plane the bench starts (space-separated)")
	fs.StringVar(&cpEnv, "cp-env", "", "extra environment for the control plane the bench starts, space-separated KEY=VALUE (e.g. GOGC=200)")
	fs.StringVar(&cfg.StateDir, "state-dir", "", "keep the control plane's data dir and the enrolled agents here, to reuse them (default: a temporary dir)")
	fs.StringVar(&cfg.Restart, "restart", "", "after the window, restart the control plane (term: SIGTERM, kill: SIGKILL) and time the reconnection")
	fs.DurationVar(&cfg.RestartTimeout, "restart-timeout", 5*time.Minute, "how long to wait for every agent to reconnect")
	fs.StringVar(&sweep, "sweep", "", "comma-separated fleet sizes (e.g. 1000,5000,10000): one run each, on one state dir")
	fs.StringVar(&plotPath, "plot", "", "write a plot of cost against fleet size (FILE.svg or FILE.png; with --sweep)")
	fs.BoolVar(&jsonOut, "json", false, "print JSON instead of the table")
	fs.StringVar(&jsonFile, "json-file", "", "also write the JSON to this file")
	fs.StringVar(&profileDir, "profile", "", "take CPU, heap and lock-contention profiles of the control plane during the window into this dir (runs the control plane inside tend-bench, with pprof); with --agent-footprint, perf record of the agent")
	fs.BoolVar(&noPerf, "no-perf", false, "do not run the control plane under perf to count its fsyncs (estimate them from /metrics)")
	fs.BoolVar(&footprint, "agent-footprint", false, "measure a real tend-agent (10 checks at --interval) for --duration instead")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&replot, "replot", "", "plot the results of an earlier --json-file (a sweep) into --plot, without running")
	fs.StringVar(&selfProf, "self-cpuprofile", "", "write a CPU profile of tend-bench itself (the simulated fleet) to this file")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: tend-bench [flags]\n\nSimulates a fleet against a real control plane and measures it (docs/BENCHMARKS.md).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "tend-bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log, err := logging.New(logLevel, "tend-bench")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tend-bench: --log-level:", err)
		return 2
	}
	cfg.Log = log
	if selfProf != "" {
		f, err := os.Create(selfProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tend-bench:", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "tend-bench:", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if replot != "" {
		if plotPath == "" {
			fmt.Fprintln(os.Stderr, "tend-bench: --replot needs --plot FILE.svg|png")
			return 2
		}
		f, err := os.Open(replot)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tend-bench:", err)
			return 1
		}
		rs, err := bench.ReadResults(f)
		f.Close()
		if err == nil {
			err = bench.Plot(plotPath, rs)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "tend-bench: --replot:", err)
			return 1
		}
		return 0
	}
	if _, err := fmt.Sscanf(trigger, "%d/%d", &cfg.TriggerFailures, &cfg.TriggerWindow); err != nil || cfg.TriggerFailures < 1 || cfg.TriggerWindow < cfg.TriggerFailures {
		fmt.Fprintf(os.Stderr, "tend-bench: --trigger %q: want FAILURES/WINDOW such as 2/3\n", trigger)
		return 2
	}
	if cfg.Warmup < 0 {
		cfg.Warmup = cfg.Interval
	}
	absBin, err := filepath.Abs(binDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tend-bench:", err)
		return 2
	}
	cfg.Spawn.Command = []string{filepath.Join(absBin, "tend-controlplane")}
	cfg.Spawn.Args = strings.Fields(cpArgs)
	cfg.Spawn.Env = strings.Fields(cpEnv)
	for _, kv := range cfg.Spawn.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			fmt.Fprintf(os.Stderr, "tend-bench: --cp-env: %q is not KEY=VALUE\n", kv)
			return 2
		}
	}
	if profileDir != "" {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, "tend-bench:", err)
			return 1
		}
		cfg.Spawn.Command = []string{self, "controlplane"}
		cfg.Spawn.Pprof = true
		cfg.ProfileDir = profileDir
	}
	if !noPerf {
		if p, err := exec.LookPath("perf"); err == nil {
			cfg.Spawn.Perf = p
		} else {
			log.Info("perf not found: fsyncs are estimated from the control plane's /metrics")
		}
	}
	if cfg.Addr != "" && cfg.AdminConf == "" {
		cfg.AdminConf = os.Getenv("TEND_CONFIG")
		if cfg.AdminConf == "" {
			cfg.AdminConf = "./tend-data/admin.conf"
		}
	}

	if footprint {
		r, err := bench.Footprint(ctx, bench.FootprintConfig{
			AgentBin: filepath.Join(absBin, "tend-agent"), PluginDir: absBin,
			Spawn:  bench.SpawnOptions{Command: []string{filepath.Join(absBin, "tend-controlplane")}, Args: []string{"--log-level", "warn"}},
			Checks: 10, Interval: cfg.Interval, Warmup: 30 * time.Second, Duration: cfg.Duration, Sample: 5 * time.Second, Log: log,
			PerfRecord: cfg.Spawn.Perf, ProfileDir: profileDir,
		})
		if err != nil {
			log.Error("agent footprint", "err", err)
			return 1
		}
		return output(jsonOut, jsonFile, r, func() { bench.WriteFootprint(os.Stdout, r) })
	}

	sizes := []int{cfg.Agents}
	if sweep != "" {
		sizes = nil
		for _, s := range strings.Split(sweep, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "tend-bench: --sweep: %q is not a fleet size\n", s)
				return 2
			}
			sizes = append(sizes, n)
		}
		sort.Ints(sizes)
	} else if plotPath != "" {
		fmt.Fprintln(os.Stderr, "tend-bench: --plot needs --sweep")
		return 2
	}
	// The bench holds one socket per agent, and so does the control plane
	// (which inherits the limit when the bench starts it).
	need := uint64(sizes[len(sizes)-1] + 4096)
	if lim, err := bench.RaiseFileLimit(need); err != nil {
		if lim < need {
			log.Error("not enough open files for this fleet", "agents", sizes[len(sizes)-1], "need", need, "limit", lim, "err", err)
			return 1
		}
		log.Warn("open-file limit", "limit", lim, "err", err)
	}

	runner, err := bench.NewRunner(cfg)
	if err != nil {
		log.Error("tend-bench", "err", err)
		return 1
	}
	defer runner.Close()
	var results []*bench.Result
	for _, n := range sizes {
		r, err := runner.Run(ctx, n)
		if err != nil {
			log.Error("run failed", "agents", n, "err", err)
			return 1
		}
		results = append(results, r)
		if len(sizes) > 1 && !jsonOut {
			bench.WriteTable(os.Stdout, r)
			fmt.Println()
		}
	}
	if plotPath != "" {
		if err := bench.Plot(plotPath, results); err != nil {
			log.Error("plot", "err", err)
			return 1
		}
		log.Info("wrote plot", "path", plotPath)
	}
	if len(results) == 1 {
		return output(jsonOut, jsonFile, results[0], func() { bench.WriteTable(os.Stdout, results[0]) })
	}
	return output(jsonOut, jsonFile, results, func() { bench.WriteSweepTable(os.Stdout, results) })
}

func output(jsonOut bool, jsonFile string, v any, table func()) int {
	if jsonFile != "" {
		f, err := os.Create(jsonFile)
		if err == nil {
			err = bench.WriteJSON(f, v)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "tend-bench: --json-file:", err)
			return 1
		}
	}
	if jsonOut {
		if err := bench.WriteJSON(os.Stdout, v); err != nil {
			return 1
		}
		return 0
	}
	table()
	return 0
}
