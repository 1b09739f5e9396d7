// Command tend-controlplane runs the Tend control plane.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"tend.dev/tend/controlplane/server"
	"tend.dev/tend/internal/logging"
	"tend.dev/tend/internal/version"
)

func main() {
	fs := flag.NewFlagSet("tend-controlplane", flag.ContinueOnError)
	var (
		cfg      server.Config
		sans     string
		logLevel string
		showVer  bool
	)
	fs.StringVar(&cfg.DataDir, "data-dir", "./tend-data", "directory for the store, CA, signing key and admin.conf")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7400", "gRPC address for agents and the admin API")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "127.0.0.1:7480", "HTTP address for /metrics and /healthz (empty: off)")
	fs.StringVar(&sans, "tls-san", "", "extra comma-separated DNS names or IPs for the serving certificate")
	fs.DurationVar(&cfg.AgentCertTTL, "agent-cert-ttl", server.DefaultAgentCertTTL, "lifetime of agent client certificates (agents renew at 2/3)")
	fs.DurationVar(&cfg.HeartbeatMinTTL, "heartbeat-ttl", 0, "minimum heartbeat TTL (default 10s; grows with fleet size)")
	fs.DurationVar(&cfg.HeartbeatGrace, "heartbeat-grace", 0, "grace after the TTL before an agent is marked down (default 5s)")
	fs.IntVar(&cfg.HistoryPerCheck, "history-per-check", 100, "results kept per (agent, check)")
	fs.IntVar(&cfg.FleetMaxConcurrent, "fleet-max-concurrent", 100, "remediation tasks in flight at once across all policies (0: no limit)")
	fs.IntVar(&cfg.FleetMaxPerHour, "fleet-max-per-hour", 1000, "remediation tasks started per hour across all policies (0: no limit)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&showVer, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: tend-controlplane [flags]\n\nRuns the Tend control plane.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "tend-controlplane: unexpected argument %q (all settings are flags; see --help)\n", fs.Arg(0))
		os.Exit(2)
	}
	if showVer {
		fmt.Println(version.Version)
		return
	}
	log, err := logging.New(logLevel, "tend-controlplane")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tend-controlplane: --log-level: %v\n", err)
		os.Exit(2)
	}
	if sans != "" {
		cfg.TLSSANs = strings.Split(sans, ",")
	}
	if cfg.HistoryPerCheck < 1 {
		fmt.Fprintf(os.Stderr, "tend-controlplane: --history-per-check must be at least 1, got %d\n", cfg.HistoryPerCheck)
		os.Exit(2)
	}
	if cfg.FleetMaxConcurrent < 0 || cfg.FleetMaxPerHour < 0 {
		fmt.Fprintf(os.Stderr, "tend-controlplane: --fleet-max-concurrent and --fleet-max-per-hour must be 0 (no limit) or more, got %d and %d\n", cfg.FleetMaxConcurrent, cfg.FleetMaxPerHour)
		os.Exit(2)
	}
	cfg.Log = log
	slog.SetDefault(log)

	srv, err := server.New(cfg)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := srv.Run(ctx); err != nil {
		log.Error("control plane failed", "err", err)
		os.Exit(1)
	}
}
