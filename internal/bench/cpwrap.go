package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"

	"tend.dev/tend/controlplane/server"
	"tend.dev/tend/internal/logging"
)

// RunProfiledControlPlane runs the control plane (the same server package
// as tend-controlplane, configured by the same flags) in this process, and
// also serves net/http/pprof on --pprof-listen, so that `tend-bench
// --profile DIR` can take CPU and heap profiles of the control plane alone.
// It returns when ctx ends.
func RunProfiledControlPlane(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tend-bench controlplane", flag.ContinueOnError)
	var (
		cfg      server.Config
		logLevel string
		pprofAt  string
	)
	fs.StringVar(&cfg.DataDir, "data-dir", "./tend-data", "data dir")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7400", "gRPC address")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "127.0.0.1:7480", "HTTP address (/metrics, /healthz)")
	fs.StringVar(&pprofAt, "pprof-listen", "127.0.0.1:0", "address for /debug/pprof")
	fs.DurationVar(&cfg.AgentCertTTL, "agent-cert-ttl", server.DefaultAgentCertTTL, "agent certificate lifetime")
	fs.DurationVar(&cfg.HeartbeatMinTTL, "heartbeat-ttl", 0, "minimum heartbeat TTL")
	fs.DurationVar(&cfg.HeartbeatGrace, "heartbeat-grace", 0, "heartbeat grace")
	fs.IntVar(&cfg.HistoryPerCheck, "history-per-check", 100, "results kept per (agent, check)")
	fs.IntVar(&cfg.FleetMaxConcurrent, "fleet-max-concurrent", 100, "remediation tasks in flight at once across all policies (0: no limit)")
	fs.IntVar(&cfg.FleetMaxPerHour, "fleet-max-per-hour", 1000, "remediation tasks started per hour across all policies (0: no limit)")
	fs.StringVar(&logLevel, "log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logging.New(logLevel, "tend-controlplane")
	if err != nil {
		return err
	}
	cfg.Log = log

	lis, err := net.Listen("tcp", pprofAt)
	if err != nil {
		return fmt.Errorf("pprof listen: %w", err)
	}
	// Lock contention too (who waits for bbolt's single writer, for the
	// fleet's mutex): /debug/pprof/mutex.
	runtime.SetMutexProfileFraction(20)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	ps := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = ps.Serve(lis) }()
	defer ps.Close()
	log.Info("pprof", "listen", lis.Addr().String())

	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
