// updatemaxprocs=0: the runtime would otherwise re-read the cgroup CPU
// limit every second to adjust GOMAXPROCS (Go 1.25+), a measurable share of
// an idle agent's CPU; GOMAXPROCS is still set from the limit at start.

//go:debug updatemaxprocs=0

// Command tend-agent runs the Tend agent on a host.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"tend.dev/tend/agent"
	"tend.dev/tend/agent/config"
	"tend.dev/tend/agent/watchdog"
	"tend.dev/tend/internal/logging"
	"tend.dev/tend/internal/version"
)

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

// gcPercent is the agent's GOGC unless the environment sets one: an idle
// agent's live heap is a few MB, so the default 100 lets it double; 50
// keeps about 1 MB less resident at no measurable CPU cost (tend-bench
// --agent-footprint: 6.1 against 7.0 MB anonymous, 0.125% of a core both).
const gcPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("tend-agent", flag.ContinueOnError)
	var (
		server, token, dataDir, name, labels, cfgPath, pluginDir, logLevel string
		wdMemory, wdCPU                                                    string
		maxBackoff                                                         time.Duration
		showVer                                                            bool
	)
	fs.StringVar(&server, "server", "", "control plane address HOST:PORT (default from --config, else 127.0.0.1:7400)")
	fs.StringVar(&token, "token", "", "join token from 'tendctl token create' (first start only)")
	fs.StringVar(&dataDir, "data-dir", "", "directory for credentials and the outbox (default from --config, else ./tend-agent-data)")
	fs.StringVar(&name, "name", "", "agent name (default hostname)")
	fs.StringVar(&labels, "labels", "", "labels as k=v,k=v (override the config file's)")
	fs.StringVar(&cfgPath, "config", "", "agent.yaml: settings, local checks and the action allow-list")
	fs.StringVar(&pluginDir, "plugin-dir", "", "directory of action plugins (tend-plugin-*)")
	fs.DurationVar(&maxBackoff, "reconnect-max-backoff", 0, "cap on the reconnect backoff (default 120s)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&wdMemory, "watchdog-memory", "", "stop (exit 3) when resident memory stays above this, e.g. 200MiB, or off (default from --config, else 200MiB)")
	fs.StringVar(&wdCPU, "watchdog-cpu", "", "stop (exit 3) when CPU use over the watchdog window is above this percent of a core, e.g. 10%, or off (default from --config, else 10%)")
	fs.BoolVar(&showVer, "version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "tend-agent: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	if showVer {
		fmt.Println(version.Version)
		return 0
	}
	log, err := logging.New(logLevel, "tend-agent")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tend-agent: --log-level: %v\n", err)
		return 2
	}
	slog.SetDefault(log)

	cfg := &config.Config{}
	if cfgPath != "" {
		if cfg, err = config.Load(cfgPath); err != nil {
			fmt.Fprintf(os.Stderr, "tend-agent: %v\n", err)
			return 2
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["server"] || cfg.Server == "" {
		cfg.Server = server
	}
	if cfg.Server == "" {
		cfg.Server = "127.0.0.1:7400"
	}
	if set["data-dir"] || cfg.DataDir == "" {
		cfg.DataDir = dataDir
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "./tend-agent-data"
	}
	if set["name"] || cfg.Name == "" {
		cfg.Name = name
	}
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
	}
	if set["labels"] {
		l, err := parseLabels(labels)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tend-agent: --labels: %v\n", err)
			return 2
		}
		cfg.Labels = l
	}
	if set["plugin-dir"] {
		cfg.PluginDir = pluginDir
	}
	if set["reconnect-max-backoff"] {
		cfg.MaxBackoff = config.Duration(maxBackoff)
	}
	if set["watchdog-memory"] {
		cfg.Watchdog.Memory = wdMemory
	}
	if set["watchdog-cpu"] {
		cfg.Watchdog.CPU = wdCPU
	}
	limits, err := cfg.Watchdog.Limits()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tend-agent: watchdog limits (agent.yaml watchdog:, --watchdog-memory, --watchdog-cpu): %v\n", err)
		return 2
	}
	specs, err := cfg.Specs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tend-agent: %v\n", err)
		return 2
	}

	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, breached := startWatchdog(sigCtx, limits, log)
	a, err := agent.New(ctx, agent.Config{
		Server:      cfg.Server,
		DataDir:     cfg.DataDir,
		Name:        cfg.Name,
		Labels:      cfg.Labels,
		Token:       token,
		LocalChecks: specs,
		OutboxMax:   cfg.OutboxMax,
		MaxBackoff:  time.Duration(cfg.MaxBackoff),
		Actions:     cfg.Actions,
		PluginDir:   cfg.PluginDir,
		Log:         log,
	})
	if breached() {
		return watchdog.ExitCode
	}
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	err = a.Run(ctx)
	if breached() {
		return watchdog.ExitCode
	}
	if err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

// stopGrace is how long the agent has to stop after a watchdog breach
// before it exits regardless.
const stopGrace = 15 * time.Second

// startWatchdog runs the watchdog for the life of ctx. On a breach it logs
// why, cancels the returned context (the agent stops as on SIGTERM: the
// outbox is closed cleanly) and, if the agent has not stopped within
// stopGrace, exits. breached reports whether that happened.
func startWatchdog(ctx context.Context, lim watchdog.Limits, log *slog.Logger) (context.Context, func() bool) {
	if lim.Memory == 0 && lim.CPU == 0 {
		log.Info("watchdog off")
		return ctx, func() bool { return false }
	}
	ctx, cancel := context.WithCancel(ctx)
	var hit atomic.Bool
	go func() {
		defer cancel()
		b, err := watchdog.Run(ctx, watchdog.Config{Limits: lim, SetGoMemoryLimit: true})
		switch {
		case err != nil:
			log.Warn("watchdog stopped: the agent runs without its memory and CPU limits", "err", err)
			<-ctx.Done()
		case b != nil:
			hit.Store(true)
			log.Error("watchdog: stopping the agent", "limit", b.Kind, "why", b.Reason, "exit_code", watchdog.ExitCode)
			cancel()
			time.AfterFunc(stopGrace, func() {
				log.Error("watchdog: the agent did not stop in time; exiting", "grace", stopGrace)
				os.Exit(watchdog.ExitCode)
			})
		}
	}()
	return ctx, hit.Load
}
